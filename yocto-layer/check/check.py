#!/usr/bin/env python3
"""Checks meta-fluxnode without a Yocto build (issue 15, "Checks in CI").

    python check.py --layer yocto-layer/meta-fluxnode \
        --kas yocto-layer/kas/fluxnode.yml --json OUT.json

Run it with the interpreter of a virtualenv made from requirements.txt next
to this file (tests/tests/yocto.rs does). It

1. runs oelint-adv over every recipe, class, append and include of the
   layer with the layer's .oelint.cfg, and counts errors and warnings;
2. parses conf/layer.conf and every recipe with BitBake's own parser (the
   `bb` package of the pinned bitbake-setup wheel), resolving require,
   include and inherit for real. oe-core's classes are not here (no network
   to fetch it), so each class the layer inherits and does not ship is
   written as an EMPTY stub on BBPATH and listed in `stubbed_classes`;
   the layer's own classes are parsed for real. A bbappend is parsed on top
   of an empty stub of the recipe it appends to (`stubbed_recipes`);
3. validates the kas file against the JSON schema the pinned kas ships;

and writes what it found as JSON. Exit status 1, with a readable message,
when oelint reports an error, a file fails to parse, or the kas file is
invalid; 0 otherwise.
"""

import argparse
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import types

# Variables reported for every recipe (plus every FLUXNODE_* one).
REPORTED = ["SUMMARY", "LICENSE", "SRC_URI", "DEPENDS", "RDEPENDS:${PN}",
            "IMAGE_INSTALL", "CARGO_BUILD_FLAGS"]

# oelint-adv's default --messageformat: {path}:{line}:{severity}:{id}:{msg}
OELINT_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+):(?P<severity>error|warning|info):"
                         r"(?P<id>[^:]+):(?P<msg>.*)$")


def fail(msg):
    print("check.py: " + msg, file=sys.stderr)


def layer_files(layer, exts):
    out = []
    for root, dirs, files in os.walk(layer):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in sorted(files):
            if os.path.splitext(f)[1] in exts:
                out.append(os.path.join(root, f))
    return out


# --- 1. oelint-adv ---------------------------------------------------------

def run_oelint(layer, config):
    files = layer_files(layer, {".bb", ".bbappend", ".bbclass", ".inc"})
    env = dict(os.environ, OELINT_CONFIG=config)
    env.pop("OELINT_SKIP_CONFIG", None)
    cmd = [sys.executable, "-m", "oelint_adv", "--quiet", "--jobs", "1"] + files
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    errors = warnings = 0
    messages = []
    for line in (p.stderr + p.stdout).splitlines():
        m = OELINT_LINE.match(line.strip())
        if not m:
            continue
        messages.append(line.strip())
        if m["severity"] == "error":
            errors += 1
        elif m["severity"] == "warning":
            warnings += 1
    problem = None
    if p.returncode not in (0, 1) or (p.returncode == 1 and not messages):
        # oelint exits 1 on findings of any severity (info too); anything
        # else is oelint failing to run.
        problem = "oelint-adv failed (exit %d): %s" % (p.returncode, (p.stderr or p.stdout)[-2000:])
    return {"errors": errors, "warnings": warnings, "messages": messages,
            "files": [os.path.relpath(f, layer) for f in files]}, problem


# --- 2. BitBake's parser ---------------------------------------------------

def import_bb():
    """The bitbake-setup wheel ships BitBake's `bb` package as a top-level
    package of site-packages, but not BitBake's `hashserv` package, which
    bb.siggen (imported by bb.parse) imports at module level. Nothing the
    parser does reaches hashserv, so an empty module stands in for it; any
    real use would fail loudly (AttributeError), not silently."""
    if "hashserv" not in sys.modules:
        try:
            import hashserv  # noqa: F401  (a full BitBake checkout on sys.path)
        except ImportError:
            hs = types.ModuleType("hashserv")
            hs.client = types.ModuleType("hashserv.client")
            sys.modules["hashserv"] = hs
            sys.modules["hashserv.client"] = hs.client
    import bb
    import bb.data
    import bb.data_smart  # noqa: F401
    import bb.parse
    import bb.parse.parse_py  # noqa: F401  (registers the .conf/.bb handlers)
    import bb.utils  # noqa: F401
    return bb


def base_datastore(bb, layer, stubdir, workdir):
    """What bitbake.conf (oe-core) would have set that the layer's files use:
    the standard install paths (non-usrmerge values), and the build's own
    directories pointed at a scratch directory. Nothing recipe-specific."""
    d = bb.data.init()
    d.setVar("BBPATH", ":".join([layer, stubdir]))
    # As bb.cookerdata sets for recipes: inherit looks in classes-recipe/
    # then classes/.
    d.setVar("__bbclasstype", "recipe")
    d.setVar("TOPDIR", workdir)
    d.setVar("TMPDIR", os.path.join(workdir, "tmp"))
    d.setVar("MACHINE", "qemux86-64")
    d.setVar("DISTRO", "fluxnode")
    d.setVar("DISTROOVERRIDES", "${DISTRO}")
    d.setVar("OVERRIDES", "pn-${PN}:${MACHINE}:${DISTROOVERRIDES}:class-target:forcevariable")
    d.setVar("THISDIR", "${@os.path.dirname(d.getVar('FILE', True))}")
    d.setVar("DEPLOY_DIR_IMAGE", "${TMPDIR}/deploy/images/${MACHINE}")
    d.setVar("COMMON_LICENSE_DIR", "${TMPDIR}/common-licenses")
    d.setVar("PN", "${@bb.parse.vars_from_file(d.getVar('FILE', False),d)[0] or 'defaultpkgname'}")
    d.setVar("PV", "${@bb.parse.vars_from_file(d.getVar('FILE', False),d)[1] or '1.0'}")
    d.setVar("BPN", "${PN}")
    d.setVar("WORKDIR", "${TMPDIR}/work/${PN}/${PV}")
    d.setVar("B", "${WORKDIR}/build")
    d.setVar("D", "${WORKDIR}/image")
    for k, v in {"prefix": "/usr", "exec_prefix": "/usr", "base_prefix": "",
                 "bindir": "${exec_prefix}/bin", "sbindir": "${exec_prefix}/sbin",
                 "base_bindir": "${base_prefix}/bin", "base_sbindir": "${base_prefix}/sbin",
                 "libdir": "${exec_prefix}/lib", "nonarch_libdir": "${exec_prefix}/lib",
                 "sysconfdir": "/etc", "datadir": "${prefix}/share"}.items():
        d.setVar(k, v)
    return d


def parse_layer_conf(bb, d, layer):
    # As bb.cookerdata does for each layer of bblayers.conf.
    d.setVar("LAYERDIR", layer)
    d.setVar("LAYERDIR_RE", re.escape(layer))
    bb.parse.handle(os.path.join(layer, "conf", "layer.conf"), d)
    d.expandVarref("LAYERDIR")
    d.expandVarref("LAYERDIR_RE")
    d.delVar("LAYERDIR")
    d.delVar("LAYERDIR_RE")
    colls = (d.getVar("BBFILE_COLLECTIONS") or "").split()
    info = {"collection": colls[0] if len(colls) == 1 else colls}
    c = colls[0] if colls else ""
    info["priority"] = d.getVar("BBFILE_PRIORITY_" + c)
    info["pattern"] = d.getVar("BBFILE_PATTERN_" + c)
    info["version"] = d.getVar("LAYERVERSION_" + c)
    info["compat"] = (d.getVar("LAYERSERIES_COMPAT_" + c) or "").split()
    info["depends"] = (d.getVar("LAYERDEPENDS_" + c) or "").split()
    info["recommends"] = (d.getVar("LAYERRECOMMENDS_" + c) or "").split()
    info["bbfiles"] = (d.getVar("BBFILES") or "").split()
    return info


MISSING_CLASS = re.compile(r"Could not inherit file (?:classes(?:-\w+)?/)?(?P<name>[\w.+-]+?)\.bbclass")


def parse_recipe(bb, base, fn, stubdir, stubbed, appends=()):
    """Parses `fn` in a copy of `base`; every class it inherits that neither
    the layer nor earlier stubs provide becomes an empty stub and the parse
    is retried."""
    while True:
        d = bb.data.createCopy(base)
        if appends:
            d.setVar("__BBAPPEND", " ".join(appends))
        try:
            return bb.parse.handle(fn, d)
        except Exception as e:  # bb.parse.ParseError, bb.BBHandledException, ...
            m = MISSING_CLASS.search(str(e))
            if not m or m["name"] in stubbed:
                raise
            name = m["name"]
            with open(os.path.join(stubdir, "classes", name + ".bbclass"), "w") as f:
                f.write("# Empty stand-in for oe-core's %s.bbclass (check.py).\n" % name)
            stubbed.add(name)


def expanded(d, var):
    try:
        return d.getVar(var)
    except Exception:
        return d.getVar(var, False)


def recipe_report(d, fn, layer, ours):
    pn = d.getVar("PN")
    inherits = []
    for path in d.getVar("__inherit_cache", False) or []:
        name = os.path.splitext(os.path.basename(path))[0]
        if name not in inherits:
            inherits.append(name)
    out = {"file": os.path.relpath(fn, layer), "inherits": inherits, "vars": {}}
    names = list(REPORTED) + sorted(k for k in d.keys() if k.startswith("FLUXNODE_"))
    for var in names:
        key = var.replace("${PN}", pn)
        if d.getVar(key, False) is None:
            continue
        out["vars"][var] = expanded(d, key)
    out["own_classes"] = [c for c in inherits if c in ours]
    return pn, out


def appended_recipe(append):
    # linux-yocto_%.bbappend -> linux-yocto
    return re.sub(r"_[^_]*$", "", os.path.splitext(os.path.basename(append))[0])


def run_bitbake(layer):
    bb = import_bb()
    import logging
    logging.getLogger("BitBake").setLevel(logging.WARNING)
    result = {"layer": None, "recipes": {}, "appends": {}, "confs": {}, "stubbed_classes": [],
              "stubbed_recipes": [], "errors": []}
    ours = {os.path.splitext(os.path.basename(p))[0]
            for p in glob.glob(os.path.join(layer, "classes*", "*.bbclass"))}
    with tempfile.TemporaryDirectory(prefix="fluxnode-bbcheck-") as tmp:
        stubdir = os.path.join(tmp, "stubs")
        os.makedirs(os.path.join(stubdir, "classes"))
        base = base_datastore(bb, layer, stubdir, os.path.join(tmp, "build"))
        try:
            result["layer"] = parse_layer_conf(bb, base, layer)
        except Exception as e:
            result["errors"].append("conf/layer.conf: %s" % e)
            return result
        # The signature generator recipe finalisation reports to; with no
        # BB_SIGNATURE_HANDLER set it is BitBake's "noop" one.
        bb.parse.init_parser(base)
        # The layer's distro and machine configurations, for syntax and
        # expansion (what bitbake.conf would include them into).
        for fn in sorted(glob.glob(os.path.join(layer, "conf", "*", "*.conf"))):
            try:
                cd = bb.data.createCopy(base)
                bb.parse.handle(fn, cd, True)
                result["confs"][os.path.relpath(fn, layer)] = {
                    k: expanded(cd, k) for k in sorted(cd.keys())
                    if k in ("DISTRO", "INIT_MANAGER", "VIRTUAL-RUNTIME_init_manager",
                             "DISTRO_FEATURES", "EFI_PROVIDER", "MACHINE")}
            except Exception as e:
                result["errors"].append("%s: %s" % (os.path.relpath(fn, layer), e))
        stubbed = set()
        for fn in layer_files(layer, {".bb"}):
            try:
                d = parse_recipe(bb, base, fn, stubdir, stubbed)
                # handle() returns {variant: datastore}; "" is the recipe itself.
                pn, rep = recipe_report(d[""], fn, layer, ours)
                result["recipes"][pn] = rep
            except Exception as e:
                result["errors"].append("%s: %s" % (os.path.relpath(fn, layer), e))
        for app in layer_files(layer, {".bbappend"}):
            target = appended_recipe(app)
            stub = os.path.join(stubdir, "recipes", target + ".bb")
            os.makedirs(os.path.dirname(stub), exist_ok=True)
            with open(stub, "w") as f:
                f.write("# Empty stand-in for %s (check.py).\n" % target)
            if target not in result["stubbed_recipes"]:
                result["stubbed_recipes"].append(target)
            try:
                d = parse_recipe(bb, base, stub, stubdir, stubbed, appends=[app])
                result["appends"][os.path.relpath(app, layer)] = {
                    "recipe": target,
                    "SRC_URI": expanded(d[""], "SRC_URI"),
                    "FILESEXTRAPATHS": expanded(d[""], "FILESEXTRAPATHS"),
                }
            except Exception as e:
                result["errors"].append("%s: %s" % (os.path.relpath(app, layer), e))
        result["stubbed_classes"] = sorted(stubbed)
    return result


# --- 3. kas ----------------------------------------------------------------

def check_kas(path):
    import jsonschema
    import yaml
    from kas import configschema
    from kas import __version__ as kasver
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        return {"valid": False, "errors": ["%s: %s" % (path, e)], "kas_version": kasver}
    validator = jsonschema.Draft7Validator(configschema.CONFIGSCHEMA)
    errors = ["%s: %s" % ("/".join(str(p) for p in e.absolute_path) or "(top)", e.message)
              for e in sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))]
    return {"valid": not errors, "errors": errors, "kas_version": kasver,
            "schema": os.path.basename(configschema.__schema_definition__)}


# --- the wks, for the consistency test -------------------------------------

def wks_parts(layer):
    out = {}
    for path in layer_files(layer, {".wks", ".in"}):
        if not re.search(r"\.wks(\.in)?$", path):
            continue
        parts = []
        with open(path) as f:
            for line in f:
                w = shlex.split(line, comments=True)
                if not w or w[0] != "part":
                    continue
                opts, i = {}, 1
                while i < len(w):
                    k, eq, v = w[i].partition("=")
                    if eq:
                        opts[k], i = v, i + 1
                    else:
                        opts[k], i = (w[i + 1] if i + 1 < len(w) else ""), i + 2
                parts.append({"name": opts.get("--part-name"), "type": opts.get("--part-type"),
                              "size": opts.get("--fixed-size"), "uuid": opts.get("--uuid")})
        out[os.path.relpath(path, layer)] = parts
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layer", required=True, help="the layer directory (yocto-layer/meta-fluxnode)")
    ap.add_argument("--kas", required=True, help="the kas file (yocto-layer/kas/fluxnode.yml)")
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--oelint-config", help="default: LAYER/.oelint.cfg")
    args = ap.parse_args()
    layer = os.path.realpath(args.layer)
    config = os.path.realpath(args.oelint_config or os.path.join(layer, ".oelint.cfg"))
    if not os.path.isfile(os.path.join(layer, "conf", "layer.conf")):
        fail("%s has no conf/layer.conf" % layer)
        return 1
    if not os.path.isfile(config):
        fail("no oelint configuration at %s" % config)
        return 1

    oelint, oelint_problem = run_oelint(layer, config)
    bbres = run_bitbake(layer)
    kas = check_kas(args.kas)
    out = {
        "oelint": oelint,
        "layer": bbres["layer"],
        "recipes": bbres["recipes"],
        "appends": bbres["appends"],
        "confs": bbres["confs"],
        "stubbed_classes": bbres["stubbed_classes"],
        "stubbed_recipes": bbres["stubbed_recipes"],
        "parse_errors": bbres["errors"],
        "kas": kas,
        "wks": wks_parts(layer),
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2, sort_keys=True)
        f.write("\n")

    bad = False
    if oelint_problem:
        fail(oelint_problem)
        bad = True
    if oelint["errors"]:
        fail("oelint-adv: %d error(s):\n  %s" % (oelint["errors"], "\n  ".join(
            m for m in oelint["messages"] if ":error:" in m)))
        bad = True
    for e in bbres["errors"]:
        fail("BitBake parse: " + e)
        bad = True
    if not kas["valid"]:
        fail("kas file %s is invalid:\n  %s" % (args.kas, "\n  ".join(kas["errors"])))
        bad = True
    print("check.py: oelint %d error(s), %d warning(s); %d recipe(s) parsed (%s); stubbed classes: %s; "
          "kas %s" % (oelint["errors"], oelint["warnings"], len(bbres["recipes"]),
                      " ".join(sorted(bbres["recipes"])), " ".join(bbres["stubbed_classes"]) or "none",
                      "valid" if kas["valid"] else "INVALID"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
