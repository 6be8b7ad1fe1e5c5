"""Rendering: tables, figures, HTML.  Renderers return objects or strings and never print."""
