#!/usr/bin/env bash
# Builds the .deb and the .rpm of pgsql-broker from a clean checkout.
#
#   packaging/build.sh
#
# Installs cargo-deb and cargo-generate-rpm (pinned, `cargo install --locked`) when they are
# missing, builds the release binary, gzips the man page into target/packaging/, then packages.
# Both packages take their file lists from Cargo.toml ([package.metadata.deb] and
# [package.metadata.generate-rpm]). Writes the package paths to target/packaging/packages.env
# (DEB=..., RPM=...) for packaging/ci.sh.
set -euo pipefail

# Versions known to build with cargo 1.95 (cargo-deb needs Rust >= 1.85, cargo-generate-rpm >= 1.88).
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

die() { echo "build.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

command -v cargo >/dev/null || die "cargo not found (install Rust with rustup)"

# The tools, if missing. `cargo deb --version` fails when the subcommand is absent.
if ! cargo deb --version >/dev/null 2>&1; then
    step "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION" \
        || die "cannot install cargo-deb $CARGO_DEB_VERSION"
fi
if ! cargo generate-rpm --version >/dev/null 2>&1; then
    step "installing cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"
    cargo install --locked cargo-generate-rpm --version "$CARGO_GENERATE_RPM_VERSION" \
        || die "cannot install cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"
fi
echo "using $(cargo deb --version), $(cargo generate-rpm --version)"

for f in README.md packaging/broker.yaml packaging/pgsql-broker.service packaging/pgsql-broker.1 \
         packaging/copyright packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm; do
    [ -f "$f" ] || die "missing $f (it is packaged)"
done
compgen -G 'docs/*.md' >/dev/null || die "missing docs/*.md (they are packaged)"

# The release binary. cargo-deb and cargo-generate-rpm both read target/release/ (or
# $CARGO_TARGET_DIR/release/, which they map themselves).
TARGET_DIR=${CARGO_TARGET_DIR:-target}
step "cargo build --release"
cargo build --release --locked --bin pgsql-broker || die "release build failed"
BIN="$TARGET_DIR/release/pgsql-broker"
[ -x "$BIN" ] || die "no binary at $BIN after the build"

# The man page goes in compressed, the same in both packages (cargo-deb would gzip a plain one
# by itself, cargo-generate-rpm would not, and the file lists must match).
OUT="$ROOT/target/packaging"
rm -rf "$OUT"
mkdir -p "$OUT"
gzip -9 -n -c packaging/pgsql-broker.1 > "$OUT/pgsql-broker.1.gz"

# Scriptlet files are read by path; keep the maintainer scripts executable whatever the checkout did.
chmod 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm

step "cargo deb --no-build"
cargo deb --no-build --output "$OUT/" || die "cargo deb failed"
step "cargo generate-rpm"
cargo generate-rpm --output "$OUT/" || die "cargo generate-rpm failed"

shopt -s nullglob
debs=("$OUT"/*.deb)
rpms=("$OUT"/*.rpm)
[ "${#debs[@]}" -eq 1 ] || die "expected one .deb in $OUT, found ${#debs[@]}"
[ "${#rpms[@]}" -eq 1 ] || die "expected one .rpm in $OUT, found ${#rpms[@]}"
printf 'DEB=%q\nRPM=%q\nBIN=%q\n' "${debs[0]}" "${rpms[0]}" "$(realpath "$BIN")" > "$OUT/packages.env"

echo
echo "deb:    ${debs[0]} ($(stat -c %s "${debs[0]}") bytes)"
echo "rpm:    ${rpms[0]} ($(stat -c %s "${rpms[0]}") bytes)"
echo "binary: $BIN ($(stat -c %s "$BIN") bytes)"
echo "ldd $BIN:"
ldd "$BIN" | sed 's/^/    /'
