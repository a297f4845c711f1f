"""Tests of the REST API: conversations, cursor pagination, the OpenAPI schema."""
