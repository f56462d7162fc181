"""The client's own bookkeeping, without a daemon."""

from __future__ import annotations

from rkserve.client import Client


def test_request_ids_never_repeat_across_the_clients_of_a_process():
    # a reply is matched to its request by id: two clients sharing ids (once the low bits of
    # id(client)) made one thread's replies look like another's, and answered ones look lost
    clients = [Client("tcp://127.0.0.1:9") for _ in range(500)]
    try:
        prefixes = [c._prefix for c in clients]
        assert len(set(prefixes)) == len(prefixes)
    finally:
        for client in clients:
            client.close()
