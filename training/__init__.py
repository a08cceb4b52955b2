"""The offline training job. The only package that imports TensorFlow."""
