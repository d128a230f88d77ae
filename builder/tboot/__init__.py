"""The tboot launch chain: VLP bytes, MLE hash, module measurement and the PCR 17-19 model."""
