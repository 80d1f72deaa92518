#!/usr/bin/env python3
"""Dependencies a crate declares but never names in its code (what cargo-machete does,
without installing it): for each workspace crate, every [dependencies],
[dev-dependencies] and [build-dependencies] entry must appear as a path (`name::`,
`use name`, `name!`) in the crate's own Rust files (for [dependencies], outside its
`tests/` and `benches/`). A crate used only through generated
code or a feature is listed in `[package.metadata.cargo-machete] ignored`. Exits 1 and
names each unused dependency."""

import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def members():
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for pattern in workspace["workspace"]["members"]:
        for path in sorted(ROOT.glob(pattern)):
            if (path / "Cargo.toml").exists():
                yield path


def sources(crate, kinds):
    files = []
    if "normal" in kinds or "dev" in kinds:
        files += [p for p in crate.rglob("*.rs") if "target" not in p.parts and p.name != "build.rs"]
    if "dev" not in kinds:
        # A normal dependency must be named by the crate's own code, not only by its
        # integration tests or benches (those belong in [dev-dependencies]).
        files = [p for p in files if not {"tests", "benches"} & set(p.relative_to(crate).parts)]
    if "build" in kinds and (crate / "build.rs").exists():
        files.append(crate / "build.rs")
    return "\n".join(p.read_text() for p in files)


def main():
    unused = []
    for crate in members():
        manifest = tomllib.loads((crate / "Cargo.toml").read_text())
        ignored = set(
            manifest.get("package", {})
            .get("metadata", {})
            .get("cargo-machete", {})
            .get("ignored", [])
        )
        tables = {
            "dependencies": {"normal"},
            "dev-dependencies": {"dev"},
            "build-dependencies": {"build"},
        }
        for table, kinds in tables.items():
            code = sources(crate, kinds)
            for name, spec in manifest.get(table, {}).items():
                if name in ignored:
                    continue
                package = spec.get("package", name) if isinstance(spec, dict) else name
                ident = name.replace("-", "_")
                if not re.search(rf"\b{re.escape(ident)}\b\s*(::|!|\s*;|\s*as\b)", code) and not re.search(
                    rf"\buse\s+{re.escape(ident)}\b|\bextern\s+crate\s+{re.escape(ident)}\b", code
                ):
                    unused.append(f"{crate.relative_to(ROOT)}: [{table}] {name} ({package})")
    for line in unused:
        print(f"unused dependency: {line}")
    return 1 if unused else 0


if __name__ == "__main__":
    sys.exit(main())
