"""Training runs: stages set up, the loop and its step runners (SFT, SCST), validation, checkpoints, the run folder and
its report, the processes of a distributed run."""
