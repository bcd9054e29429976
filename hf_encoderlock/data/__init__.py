"""hf_encoderlock.data."""
