"""What a recipe may say: its typed schema, parsing with did-you-mean, and the cross-checks of its stages."""
