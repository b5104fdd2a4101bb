"""Seeded weights stay the same when another thread draws from torch's generator meanwhile."""

import threading
import time

import torch

from mome_cli.rng import isolated, seeded


def test_a_seeded_block_restores_the_generator_and_draws_the_same_every_time():
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    with seeded(3):
        first = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)
    with seeded(3):
        assert torch.equal(torch.rand(4), first)


def test_draws_in_another_thread_do_not_fall_inside_a_seeded_block():
    with seeded(3):
        expected = torch.rand(8)
    inside, drew, drawn = threading.Event(), threading.Event(), []

    def other():  # face-alignment building its networks in the read-ahead thread
        with isolated():
            inside.set()
            drew.wait(0.5)  # without the lock, the main thread's block has begun by now
            drawn.append(torch.rand(100))
        # leaving, it restored the generator it found: without the lock, that undoes the main thread's seed

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(10)
    with seeded(3):
        first = torch.rand(4)
        drew.set()
        time.sleep(0.3)
        rest = torch.rand(4)
    thread.join(10)
    assert drawn and torch.equal(torch.cat([first, rest]), expected)
