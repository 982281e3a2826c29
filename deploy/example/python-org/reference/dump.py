"""Runs buildbot.python.org's master.cfg and writes what it expands to,
beside this script: builders.jsonl (every builder: name, workers, tags, the
schedulers that list it) and steps.json (the steps of a few builders of
each kind). buildmaster's translation is checked against them
(shared/tests/python_org.rs).

    CI=1 venv/bin/python dump.py PATH/TO/buildmaster-config/master
"""
import json
import os
import sys
import tempfile

cfg_dir = os.path.abspath(sys.argv[1])
out_dir = os.path.dirname(os.path.abspath(__file__))
# Its settings.yaml is private: an empty one gives every default.
settings = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
settings.write("owners: {}\nworkers: {}\n")
settings.close()
os.environ["PYBUILDBOT_SETTINGS_PATH"] = settings.name
os.chdir(cfg_dir)
sys.path.insert(0, cfg_dir)
ns = {"__file__": os.path.join(cfg_dir, "master.cfg")}
# The release dashboard reads python.org at start; nothing here needs it.
text = open("master.cfg").read().replace("get_release_status_app(", "(lambda *a, **k: None)(")
exec(compile(text, "master.cfg", "exec"), ns)
c = ns["BuildmasterConfig"]
from buildbot.process.properties import Interpolate  # noqa: E402

STEPS_OF = [
    "AMD64 Debian root 3.x", "PPC64LE Fedora Stable Refleaks 3.10", "AMD64 Fedora Stable PR",
    "ARM64 Raspbian 3.14", "AMD64 Arch Linux Asan 3.13", "x86 Debian Installed with X 3.12",
    "AMD64 Windows11 Refleaks 3.11", "ARM64 Windows Non-Debug 3.13", "wasm32-wasi Non-Debug 3.12",
    "wasm32-wasi 3.x", "iOS ARM64 Simulator 3.13", "iOS ARM64 Simulator 3.x", "aarch64 Android 3.14",
    "AMD64 Arch Linux Valgrind PR", "aarch64 Ubuntu 24.04 BigMem 3.x", "WASM Emscripten 3.15",
    "AMD64 CentOS9 NoGIL Refleaks 3.14",
]


def render(x):
    if isinstance(x, (list, tuple)):
        return [render(i) for i in x]
    if isinstance(x, dict):
        return {k: render(v) for k, v in x.items()}
    if isinstance(x, Interpolate):
        return "Interpolate(" + x.fmtstring + ")"
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(type(x).__name__)


def step(f):
    out = {"class": f.step_class.__name__}
    inst = f.buildStep()
    for attr in ["name", "command", "timeout", "env", "workdir", "haltOnFailure", "flunkOnFailure",
                 "warnOnFailure", "alwaysRun", "usePTY", "property", "repourl", "branch", "mode", "method",
                 "filters", "clobberOnFailure", "shallow", "maxTime", "decodeRC", "doStepIf", "workersrc"]:
        if hasattr(inst, attr):
            v = getattr(inst, attr)
            if callable(v) and attr == "doStepIf":
                v = "callable"
            out[attr] = render(v)
    return out


listed = {}
for s in c["schedulers"]:
    for name in s.builderNames:
        listed.setdefault(name, []).append(s.name)
with open(os.path.join(out_dir, "builders.jsonl"), "w") as f:
    for b in c["builders"]:
        f.write(json.dumps({"name": b.name, "workers": b.workernames, "tags": sorted(b.tags),
                            "schedulers": sorted(listed.get(b.name, []))}) + "\n")
by_name = {b.name: b for b in c["builders"]}
with open(os.path.join(out_dir, "steps.json"), "w") as f:
    json.dump({name: [step(s) for s in by_name[name].factory.steps] for name in sorted(STEPS_OF)}, f, indent=1)
print(f"{len(c['builders'])} builders, {len(c['schedulers'])} schedulers, {len(c['workers'])} workers")
