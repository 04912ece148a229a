"""Errors answered in OpenAI's shape, and the body of an error raised anywhere while answering."""

from __future__ import annotations


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param, code)


def error_body(error: Exception) -> dict:
    if isinstance(error, ApiError):
        return error.body()
    return ApiError(500, f"generation failed: {error}", type="server_error").body()
