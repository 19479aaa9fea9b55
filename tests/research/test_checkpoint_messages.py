"""research.train.checkpoints.describe_cause: the cause a corrupt-checkpoint message gives is
readable (a type and a message), never an object's repr."""

from research.train.checkpoints import describe_cause


class _Reader:
    def read(self):  # its bound method's repr is what a native error once printed
        pass


def _chained(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except type(inner) as error:
            raise outer from error
    except type(outer) as error:
        return error


def test_a_repr_for_a_message_gives_way_to_the_readable_cause_beneath():
    """ValueError(<bound method ...>) raised from a real I/O error: the I/O error is named."""
    error = _chained(ValueError(_Reader().read), OSError("Truncated file: 12 of 400 bytes"))
    assert describe_cause(error) == "OSError: Truncated file: 12 of 400 bytes"


def test_reprs_inside_a_message_are_removed_and_whitespace_folded():
    """Nested reprs vanish from a message that also says something."""
    error = ValueError("bad header\n  in <bound method R.read of <x.R object at 0x7f>> here")
    assert describe_cause(error) == "ValueError: bad header in here"


def test_an_error_with_nothing_readable_is_named_by_its_type():
    """No message anywhere in the chain: the type alone, no repr."""
    assert describe_cause(ValueError(_Reader().read)) == "ValueError (no message)"


def test_long_messages_are_cut():
    """At most 300 characters of message."""
    assert len(describe_cause(RuntimeError("x" * 1000))) == len("RuntimeError: ") + 300
