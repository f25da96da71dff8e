"""The police webhook: its JSON alarm document, signatures and answer rules (pure)."""
