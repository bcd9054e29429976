"""hf_encoderlock.hub."""
