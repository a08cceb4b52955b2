"""The model server. Importing the package is cheap: the web stack loads in `app.main`."""
