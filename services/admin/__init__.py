"""`zhiva-admin`: the operator's command line."""
