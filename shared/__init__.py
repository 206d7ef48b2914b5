"""Code both sides import: protocol stubs, tensor codec, model zoo, objectives, config, data."""

__version__ = "0.1.0"
