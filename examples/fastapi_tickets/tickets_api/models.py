from pydantic import BaseModel, Field


class QtyRequest(BaseModel):
    qty: int = Field(gt=0, le=1_000_000)


class AvailableResponse(BaseModel):
    qty: int


class OperationResponse(BaseModel):
    success: bool
    remaining: int
    message: str | None = None
