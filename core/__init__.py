"""The jaxyard core: hook specifications, the registry, configuration and the training engine."""
