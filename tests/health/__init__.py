"""Tests of mpai.health: checks, runner, heartbeats, alerts, dashboard, endpoints."""
