"""The model server. Importing the package is cheap: the web stack loads in `app.main`."""

__version__ = "0.1.0"
