"""tfdiffusion: denoising diffusion models for TensorFlow and Keras."""
