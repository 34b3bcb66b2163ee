"""Training a decoder: the run, its phases (teacher forcing, self-critical), batches and steps."""
