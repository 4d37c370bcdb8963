"""The child processes' XLA_FLAGS (tests/xla_flags.py)."""

from tests.xla_flags import COLLECTIVE_PATIENCE, DEVICE_COUNT_FLAG, FAST_COMPILE, xla_flags


def test_children_keep_the_users_flags_and_get_fast_compile_once():
    user = "--xla_dump_to=/tmp/dump --xla_cpu_enable_fast_math=false"
    flags = xla_flags(inherited=user).split()
    assert flags[:2] == user.split()  # the user's flags first, unchanged
    assert all(flags.count(flag) == 1 for flag in FAST_COMPILE.split())
    assert xla_flags(inherited=f"{user} {FAST_COMPILE}").split() == flags  # not added twice


def test_the_device_count_is_the_tests_never_the_inherited_one():
    inherited = f"--xla_dump_to=/tmp/dump {DEVICE_COUNT_FLAG}=8"
    assert xla_flags(4, inherited).split()[-1] == f"{DEVICE_COUNT_FLAG}=4"
    assert [f for f in xla_flags(4, inherited).split() if f.startswith(DEVICE_COUNT_FLAG)] == [f"{DEVICE_COUNT_FLAG}=4"]
    assert DEVICE_COUNT_FLAG not in xla_flags(inherited=inherited)  # no count asked: JAX's default device
    assert "--xla_dump_to=/tmp/dump" in xla_flags(4, inherited)


def test_children_with_several_devices_wait_longer_in_collectives():
    assert COLLECTIVE_PATIENCE in xla_flags(4, "").split()
    assert COLLECTIVE_PATIENCE not in xla_flags(1, "") and COLLECTIVE_PATIENCE not in xla_flags(inherited="")
    assert xla_flags(2, COLLECTIVE_PATIENCE).split().count(COLLECTIVE_PATIENCE) == 1
