"""Model catalogue: HF configs of common architectures, shipped as JSON data with a source each."""
