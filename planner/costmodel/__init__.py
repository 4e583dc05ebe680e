"""Cost model: parameter/FLOP accounting today; compute, memory, communication and
pipeline simulation as they land."""
