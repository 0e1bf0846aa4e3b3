"""The platform's users: their subscription tier and rotation policy."""
