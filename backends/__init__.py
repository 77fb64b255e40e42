"""seqc backends: one folder each, a renderer plus Jinja2 templates."""
