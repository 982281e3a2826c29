"""Loads buildbot.python.org's master.cfg and prints its builders and
schedulers as JSON: what buildmaster's translation is checked against."""
import json, os, sys
cfg_dir = sys.argv[1]
os.chdir(cfg_dir)
sys.path.insert(0, cfg_dir)
ns = {"__file__": os.path.join(cfg_dir, "master.cfg")}
# The release dashboard reads python.org at start; nothing here needs it.
text = open("master.cfg").read().replace("get_release_status_app(", "(lambda *a, **k: None)(")
exec(compile(text, "master.cfg", "exec"), ns)
c = ns["BuildmasterConfig"]
from buildbot.process.properties import Interpolate, renderer

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

builders = []
for b in c["builders"]:
    builders.append({"name": b.name, "workernames": b.workernames, "tags": b.tags, "builddir": b.builddir,
                     "downtime": b.canStartBuild is not None,
                     "steps": [step(s) for s in b.factory.steps]})
scheds = []
for s in c["schedulers"]:
    scheds.append({"name": s.name, "class": type(s).__name__, "builderNames": list(s.builderNames),
                   "treeStableTimer": getattr(s, "treeStableTimer", None)})
workers = [{"name": w.workername, "max_builds": w.max_builds} for w in c["workers"]]
json.dump({"builders": builders, "schedulers": scheds, "workers": workers}, sys.stdout, indent=1)
