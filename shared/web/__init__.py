"""The web layer: app factory, middleware, error rendering and dependency aliases."""
