"""One run: data, the compiled steps and loops, assembly, events, loggers and the engine."""
