"""Policy profiles, Cedar authorization, input validation and output guards."""
