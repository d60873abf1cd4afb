"""Helpers the tests share: real sim and daemon processes, ports, temp sockets."""
