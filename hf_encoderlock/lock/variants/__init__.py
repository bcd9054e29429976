"""hf_encoderlock.lock.variants."""
