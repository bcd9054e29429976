"""hf_encoderlock.lock."""
