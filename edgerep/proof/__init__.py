"""The proof that a deploy form computes its train form's function: checks, error measures, cost, the report."""
