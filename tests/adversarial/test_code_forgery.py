"""Programs that try to pass code tests without solving them. Expected outcome of every case: 0 forged passes.

Each test's expected value is a fresh random secret, so the only way to pass is to learn it: from the harness's
frames, its stdin, a file, the result channel, or by making a comparison lie. The honest control at the end
shows the same tests pass when the secret is computed legitimately (so a 0.0 is the containment, not a broken
harness).
"""
import json
import os
import secrets
import shutil
import tempfile

import pytest

from r1_megatron.rewards import code_tests


def fenced(code: str) -> str:
    return f"```python\n{code}\n```"


@pytest.fixture
def secret():
    return secrets.token_hex(8)


FORGERS = {
    "override builtins.exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef solve():\n    return 'x'\n",
    "override builtins.compile": (
        "import builtins\n_compile = compile\n"
        "builtins.compile = lambda source, name, mode, *a, **k: _compile('None' if mode == 'eval' else 'pass', name, mode)\n"
        "def solve():\n    return 'x'\n"),
    "override builtins.open and eval": (
        "import builtins, io\nbuiltins.open = lambda *a, **k: io.StringIO('')\nbuiltins.eval = lambda *a, **k: True\n"
        "def solve():\n    return 'x'\n"),
    "read the harness's frames (f_locals, co_consts)": (
        "import sys, re\n"
        "def solve():\n"
        "    frame, seen = sys._getframe(1), []\n"
        "    while frame is not None:\n"
        "        seen += [v for v in frame.f_locals.values() if isinstance(v, (str, bytes))]\n"
        "        seen += [c for c in frame.f_code.co_consts if isinstance(c, (str, bytes))]\n"
        "        frame = frame.f_back\n"
        "    for v in seen:\n"
        "        text = v.decode(errors='ignore') if isinstance(v, bytes) else v\n"
        "        for found in re.findall(r'[0-9a-f]{16}', text):\n"
        "            return found\n"
        "    return ''\n"),
    "rewind stdin and write what it holds to every fd": (
        "import os\n"
        "try:\n    os.lseek(0, 0, 0)\n    data = os.read(0, 4096)\nexcept OSError:\n    data = b''\n"
        "for fd in range(3, 64):\n"
        "    try:\n        os.write(fd, data)\n    except OSError:\n        pass\n"
        "def solve():\n    return data.decode(errors='ignore').strip()\n"),
    "an object whose __eq__ is always true": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n    __ne__ = lambda s, o: False\n"
        "    __hash__ = object.__hash__\n"
        "def solve():\n    return Anything()\n"),
    "a str subclass whose __eq__ is always true": (
        "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def solve():\n    return S('x')\n"),
    "pretend to be numpy": (
        "class Fake:\n    __module__ = 'numpy'\n    def tolist(self):\n        return Fake()\n"
        "def solve():\n    return Fake()\n"),
    "read tests.py from the working directory": (
        "import os, re\n"
        "def solve():\n"
        "    for name in ('tests.py', 'plan.json', '../plan.json', '../tests.py'):\n"
        "        try:\n            found = re.findall(r'[0-9a-f]{16}', open(name).read())\n"
        "        except OSError:\n            continue\n"
        "        if found:\n            return found[0]\n"
        "    return ''\n"),
    "forge result lines on every fd": (
        "import os, json\n"
        "for fd in range(3, 64):\n"
        "    for step in range(4):\n"
        "        try:\n            os.write(fd, (json.dumps([step, 'forged']) + '\\n').encode())\n"
        "        except OSError:\n            pass\n"
        "def solve():\n    return 'forged'\n"),
    "exit with status 0 before the tests": "import os\nos._exit(0)\n",
    "raise SystemExit inside the call": "def solve():\n    raise SystemExit(0)\n",
}


def _dataset_reader(path: str) -> str:
    return ("import json, re\n"
            "def solve():\n"
            f"    try:\n        return json.loads(open({path!r}).readline())['answer']\n"
            "    except OSError:\n        return ''\n")


@pytest.fixture
def world_readable_dataset(secret):
    """The answer key as a user would leave it: a JSONL file in a world-readable directory."""
    directory = tempfile.mkdtemp(prefix="r1_adv_data_")
    os.chmod(directory, 0o755)
    path = os.path.join(directory, "train.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"question": "solve()", "answer": secret}) + "\n")
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(directory)


@pytest.mark.parametrize("name", list(FORGERS))
def test_forger_scores_zero_on_assert_tests(name, secret):
    assert code_tests(fenced(FORGERS[name]), [f"assert solve() == {secret!r}"], timeout_s=5.0) == 0.0


@pytest.mark.parametrize("name", ["an object whose __eq__ is always true", "read the harness's frames (f_locals, co_consts)",
                                  "forge result lines on every fd", "read tests.py from the working directory"])
def test_forger_scores_zero_on_functional_tests(name, secret):
    test = {"input": "", "output": json.dumps(secret), "testtype": "functional", "func_name": "solve"}
    assert code_tests(fenced(FORGERS[name]), [test], timeout_s=5.0) == 0.0


def test_reading_the_dataset_forges_nothing(secret, world_readable_dataset):
    program = _dataset_reader(world_readable_dataset)
    assert code_tests(fenced(program), [f"assert solve() == {secret!r}"]) == 0.0
    stdio = program + "print(solve())\n"
    assert code_tests(fenced(stdio), [{"input": "", "output": secret}]) == 0.0


def test_honest_solutions_pass_the_same_tests(secret):
    """The control: computing the secret legitimately passes every kind of test used above."""
    honest = f"def solve():\n    return {secret!r}\nif __name__ == '__main__':\n    print(solve())\n"
    functional = {"input": "", "output": json.dumps(secret), "testtype": "functional", "func_name": "solve"}
    tests = [f"assert solve() == {secret!r}", functional, {"input": "", "output": secret}]
    assert code_tests(fenced(honest), tests) == 1.0
