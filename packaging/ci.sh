#!/usr/bin/env bash
# Packaging CI: builds the .deb and .rpm, installs the .deb on this machine and checks it against
# the test PostgreSQL, compares the .rpm's file list with the .deb's, then removes and purges the
# package. Run as root on Debian/Ubuntu:
#
#   packaging/ci.sh
#
# The test server defaults to 127.0.0.1:5432, user postgres, no password (trust); override with
# PKG_CI_PGHOST, PKG_CI_PGPORT, PKG_CI_PGUSER (and PGPASSWORD). A temporary database
# (PKG_CI_DB, default pgsql_broker_pkg_ci) is created and dropped.
#
# Any failed check stops the script with a message naming it. Whatever happens, the package is
# purged and the temporary database dropped on exit.
set -euo pipefail

START=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

PGHOST_CI=${PKG_CI_PGHOST:-127.0.0.1}
PGPORT_CI=${PKG_CI_PGPORT:-5432}
PGUSER_CI=${PKG_CI_PGUSER:-postgres}
DB=${PKG_CI_DB:-pgsql_broker_pkg_ci}
PKG=pgsql-broker
CONF=/etc/pgsql-broker/broker.yaml
UNIT=/usr/lib/systemd/system/pgsql-broker.service

fail() { echo "ci.sh: FAILED: $*" >&2; exit 1; }
step() { echo; echo "==> $*"; }
ok() { echo "    ok: $*"; }

[ "$(id -u)" -eq 0 ] || fail "must run as root (dpkg -i)"
command -v dpkg >/dev/null || fail "dpkg not found: this script runs on Debian/Ubuntu"
command -v psql >/dev/null || fail "psql not found (needed to create the test database)"

psql_ci() {
    PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST_CI" -p "$PGPORT_CI" -U "$PGUSER_CI" -d postgres "$@"
}

installed_state() { dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null || true; }

CLEANED=0
cleanup() {
    local rc=$?
    [ "$CLEANED" -eq 1 ] && return
    CLEANED=1
    if [ -n "$(installed_state)" ]; then
        echo "cleanup: purging $PKG" >&2
        dpkg -P "$PKG" >/dev/null 2>&1 || echo "cleanup: dpkg -P $PKG failed" >&2
    fi
    psql_ci -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 \
        || echo "cleanup: cannot drop database $DB" >&2
    [ -n "${TMPD:-}" ] && rm -rf "$TMPD"
    if [ "$rc" -ne 0 ]; then
        echo "ci.sh: failed after $(( $(date +%s) - START )) s" >&2
    fi
}
trap cleanup EXIT
TMPD=$(mktemp -d)

# A leftover from an interrupted run would make every check below meaningless.
if [ -n "$(installed_state)" ]; then
    echo "note: $PKG is installed already ($(installed_state)); purging it first"
    dpkg -P "$PKG" >/dev/null || fail "cannot purge the previously installed $PKG"
fi

# ---------------------------------------------------------------------------------------------
step "packaged docs cover the code (config keys, commands, options)"
# Every key the config accepts (the `"key" => self.key = ...` arms in src/config/) must be in
# packaging/broker.yaml (set or commented out) and in the man page; every subcommand and long
# option of src/cli/ must be in the man page.
missing=()
keys=$(sed -nE 's/^[[:space:]]*"([a-z_]+)" => self\..*/\1/p' src/config/*.rs | sort -u)
[ "$(wc -w <<<"$keys")" -ge 20 ] || fail "cannot find the config keys in src/config/ (the check needs updating)"
for k in $keys; do
    grep -qE "^[[:space:]]*(#[[:space:]]*)?(- )?$k:" packaging/broker.yaml || missing+=("broker.yaml: key $k")
    grep -qF "$k" packaging/pgsql-broker.1 || missing+=("pgsql-broker.1: key $k")
done
for c in $(grep -oE 'argh\(subcommand, name = "[a-z-]+"' src/cli/*.rs | grep -oE '"[a-z-]+"' | tr -d '"'); do
    grep -qE "^\.B(R|I)? .*\b$c\b" packaging/pgsql-broker.1 || missing+=("pgsql-broker.1: command $c")
done
for o in $(awk '/#\[argh\((option|switch)/ { getline; sub(/^[[:space:]]*/, ""); sub(/^pub(\([^)]*\))?[[:space:]]+/, ""); sub(/:.*/, ""); print }' src/cli/*.rs | sort -u); do
    roff="\\-\\-${o//_/\\-}"
    grep -qF -- "$roff" packaging/pgsql-broker.1 || missing+=("pgsql-broker.1: option --${o//_/-}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    printf '    missing: %s\n' "${missing[@]}" >&2
    fail "packaging/broker.yaml or packaging/pgsql-broker.1 does not document everything the code accepts"
fi
ok "every config key, command and option is documented"

# ---------------------------------------------------------------------------------------------
step "build both packages (packaging/build.sh)"
BUILD_START=$(date +%s)
packaging/build.sh || fail "packaging/build.sh"
BUILD_SECS=$(( $(date +%s) - BUILD_START ))
# shellcheck disable=SC1091
. target/packaging/packages.env
[ -f "$DEB" ] || fail "build.sh reported no .deb"
[ -f "$RPM" ] || fail "build.sh reported no .rpm"
VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$VERSION" ] || fail "cannot read the version from Cargo.toml"

# ---------------------------------------------------------------------------------------------
step "tools: rpm"
if ! command -v rpm >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends rpm >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends rpm >/dev/null; } \
        || fail "apt-get install rpm"
fi
ok "$(rpm --version)"

# ---------------------------------------------------------------------------------------------
step "compare the .rpm's files with the .deb's"
# Regular files only, as "mode path"; directories are not compared (cargo-generate-rpm does not
# own directories, dpkg lists every parent).
dpkg -c "$DEB" | awk '$1 ~ /^-/ { p = $6; sub(/^\./, "", p); print $1, p }' | sort -k2 > "$TMPD/deb.files"
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$RPM" | awk '$1 ~ /^-/' | sort -k2 > "$TMPD/rpm.files"
rpm -qlp "$RPM" | sort > "$TMPD/rpm.qlp"
[ -s "$TMPD/deb.files" ] || fail "dpkg -c lists no files in $DEB"
# The required comparison: the paths of regular files, from rpm -qlp and dpkg -c.
grep -Fxf <(awk '{ print $2 }' "$TMPD/rpm.files") "$TMPD/rpm.qlp" | sort > "$TMPD/rpm.paths" || true
awk '{ print $2 }' "$TMPD/deb.files" | sort > "$TMPD/deb.paths"
if ! diff -u "$TMPD/deb.paths" "$TMPD/rpm.paths"; then
    fail "file lists differ between the .deb (dpkg -c, -) and the .rpm (rpm -qlp, +)"
fi
ok "same $(wc -l < "$TMPD/deb.paths") files in both packages:"
sed 's/^/        /' "$TMPD/deb.files"
if ! diff -u "$TMPD/deb.files" "$TMPD/rpm.files"; then
    fail "file modes differ between the .deb (-) and the .rpm (+)"
fi
ok "same modes"
# docs/*.md goes in by a glob in both lists: every file of the checkout must be in both packages,
# the .rpm marking each as %doc.
DOCDIR=/usr/share/doc/pgsql-broker/docs
shopt -s nullglob
docs_src=(docs/*.md)
shopt -u nullglob
[ "${#docs_src[@]}" -gt 0 ] || fail "no docs/*.md in the checkout"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$RPM" > "$TMPD/rpm.flags"
for f in "${docs_src[@]}" README.md; do
    case "$f" in
        docs/*) dest="$DOCDIR/${f#docs/}" ;;
        *) dest="/usr/share/doc/pgsql-broker/$f" ;;
    esac
    grep -qx -- "-rw-r--r-- $dest" "$TMPD/deb.files" || fail ".deb lacks $dest (mode 644) for $f"
    grep -qx -- "-rw-r--r-- $dest" "$TMPD/rpm.files" || fail ".rpm lacks $dest (mode 644) for $f"
    awk -v p="$dest" '$2 == p { print $1 }' "$TMPD/rpm.flags" | grep -q d || fail ".rpm: $dest is not %doc"
done
grep -qx -- "-rw-r--r-- $DOCDIR/configuration.md" "$TMPD/rpm.files" || fail ".rpm lacks $DOCDIR/configuration.md"
ok "README.md and ${#docs_src[@]} docs/*.md files in both packages under /usr/share/doc/pgsql-broker/ (.rpm: %doc)"
rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]' "$RPM" \
    | grep -qx "cn root:pgsql-broker $CONF" \
    || fail ".rpm: $CONF is not %config(noreplace) root:pgsql-broker"
ok ".rpm: $CONF is %config(noreplace), root:pgsql-broker"
scripts=$(rpm -qp --scripts "$RPM")
for s in preinstall postinstall preuninstall postuninstall; do
    grep -q "^$s scriptlet" <<<"$scripts" || fail ".rpm has no $s scriptlet"
done
grep -q "useradd --system" <<<"$scripts" || fail ".rpm preinstall does not create the user"
ok ".rpm scriptlets: pre/post install/uninstall"
dpkg-deb -f "$DEB" Depends | grep -q libc6 || fail ".deb Depends lacks libc6 (\$auto)"
dpkg-deb --ctrl-tarfile "$DEB" | tar -t | grep -qx './conffiles' || fail ".deb has no conffiles"
[ "$(dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles)" = "$CONF" ] \
    || fail ".deb conffiles is not exactly $CONF"
ok ".deb: conffiles = $CONF; Depends: $(dpkg-deb -f "$DEB" Depends)"

# ---------------------------------------------------------------------------------------------
step "dpkg -i $(basename "$DEB")"
dpkg -i "$DEB" || fail "dpkg -i $DEB"
[ "$(installed_state)" = "ii " ] || fail "dpkg state after install is '$(installed_state)', not 'ii'"
[ -x /usr/bin/pgsql-broker ] || fail "/usr/bin/pgsql-broker missing or not executable"
[ -f "$UNIT" ] || fail "$UNIT missing"
getent passwd pgsql-broker >/dev/null || fail "postinst did not create the user pgsql-broker"
getent group pgsql-broker >/dev/null || fail "postinst did not create the group pgsql-broker"
uid=$(id -u pgsql-broker)
[ "$uid" -lt 1000 ] || fail "pgsql-broker is not a system user (uid $uid)"
[ "$(id -gn pgsql-broker)" = pgsql-broker ] || fail "pgsql-broker's primary group is not pgsql-broker"
ok "user pgsql-broker (uid $uid, shell $(getent passwd pgsql-broker | cut -d: -f7))"
dpkg -L "$PKG" | grep -qx "$DOCDIR/configuration.md" || fail "dpkg -L $PKG does not list $DOCDIR/configuration.md"
[ -f "$DOCDIR/configuration.md" ] \
    || fail "$DOCDIR/configuration.md not installed (does a path-exclude in /etc/dpkg/dpkg.cfg.d/ drop /usr/share/doc?)"
for f in "${docs_src[@]}"; do
    cmp -s "$f" "$DOCDIR/${f#docs/}" || fail "$DOCDIR/${f#docs/} missing or not the same as $f"
done
cmp -s README.md /usr/share/doc/pgsql-broker/README.md || fail "/usr/share/doc/pgsql-broker/README.md missing or not the same as README.md"
ok "installed: README.md and ${#docs_src[@]} files in $DOCDIR (configuration.md included)"

check_conf_perms() {
    local got
    got=$(stat -c '%a %U %G' "$CONF") || fail "$CONF missing"
    [ "$got" = "640 root pgsql-broker" ] || fail "$CONF is '$got' (mode owner group), want '640 root pgsql-broker'"
}
check_conf_perms
ok "$CONF: mode 640, root:pgsql-broker"
if systemctl is-enabled pgsql-broker.service >/dev/null 2>&1; then
    fail "the package enabled pgsql-broker.service; it must wait for the operator"
fi
ok "service not enabled"

step "/usr/bin/pgsql-broker --version"
out=$(/usr/bin/pgsql-broker --version) || fail "pgsql-broker --version exited $?"
echo "    $out"
[ "$out" = "pgsql-broker $VERSION" ] || fail "--version printed '$out', want 'pgsql-broker $VERSION'"
man_out=$(MANWIDTH=80 man -l /usr/share/man/man1/pgsql-broker.1.gz 2>/dev/null | head -n 5 || true)
if command -v man >/dev/null; then
    grep -q "pgsql-broker" <<<"$man_out" || fail "the installed man page does not render"
    ok "man page renders"
fi

if command -v systemd-analyze >/dev/null; then
    step "systemd-analyze verify $UNIT"
    man_opt=()
    command -v man >/dev/null || man_opt=(--man=no)
    systemd-analyze verify "${man_opt[@]}" "$UNIT" || fail "systemd-analyze verify $UNIT"
    ok "unit verifies"
else
    step "systemd-analyze not available: unit not verified"
fi

# ---------------------------------------------------------------------------------------------
step "the packaged default config parses (as the service user)"
# Its database (local socket, role pgsql-broker) is probably not there: a connection failure
# (exit 1) is fine, a configuration error (exit 2) is not.
set +e
err=$(runuser -u pgsql-broker -- /usr/bin/pgsql-broker --config "$CONF" install --verify-only 2>&1)
rc=$?
set -e
echo "$err" | sed 's/^/    /'
[ "$rc" -ne 2 ] || fail "the packaged $CONF is rejected as a configuration error"
ok "exit $rc (not a configuration error)"

step "install and verify the schema with a config in the packaged layout"
psql_ci -c "DROP DATABASE IF EXISTS $DB" >/dev/null || fail "cannot reach PostgreSQL at $PGHOST_CI:$PGPORT_CI as $PGUSER_CI"
psql_ci -c "CREATE DATABASE $DB" >/dev/null || fail "CREATE DATABASE $DB"
# The packaged file, edited in place the way an operator would: point it at the test server.
sed -e "s|^\(    host:\).*|\1 $PGHOST_CI|" \
    -e "s|^\(    port:\).*|\1 $PGPORT_CI|" \
    -e "s|^\(    database:\).*|\1 $DB|" \
    -e "s|^\(    user:\).*|\1 $PGUSER_CI|" \
    "$CONF" > "$TMPD/broker.yaml"
grep -q "^    database: $DB\$" "$TMPD/broker.yaml" || fail "could not edit the database into $CONF"
grep -q "^    host: $PGHOST_CI\$" "$TMPD/broker.yaml" || fail "could not edit the host into $CONF"
cat "$TMPD/broker.yaml" > "$CONF"   # keeps the file's owner and mode
check_conf_perms
# Run as the service user: it must be able to read its config.
runuser -u pgsql-broker -- /usr/bin/pgsql-broker --config "$CONF" install \
    || fail "pgsql-broker --config $CONF install (exit $?)"
set +e
out=$(runuser -u pgsql-broker -- /usr/bin/pgsql-broker --config "$CONF" install --verify-only)
rc=$?
set -e
echo "$out" | sed 's/^/    /'
[ "$rc" -eq 0 ] || fail "pgsql-broker --config $CONF install --verify-only exited $rc, want 0"
ok "install --verify-only: exit 0"
if getent passwd nobody >/dev/null; then
    set +e
    runuser -u nobody -- /usr/bin/pgsql-broker --config "$CONF" install --verify-only >/dev/null 2>&1
    rc=$?
    set -e
    [ "$rc" -eq 2 ] || fail "a user outside group pgsql-broker could use $CONF (exit $rc, want 2: unreadable)"
    ok "$CONF unreadable to other users (exit 2)"
fi

step "dpkg -i again (the upgrade path): local edits and permissions kept"
dpkg -i "$DEB" || fail "dpkg -i $DEB over the installed package"
[ "$(installed_state)" = "ii " ] || fail "dpkg state after reinstall is '$(installed_state)', not 'ii'"
grep -q "^    database: $DB\$" "$CONF" || fail "reinstalling the package overwrote the edited $CONF"
check_conf_perms
ok "edited $CONF kept, mode 640 root:pgsql-broker"

# ---------------------------------------------------------------------------------------------
step "dpkg -r $PKG: binary gone, config kept"
dpkg -r "$PKG" || fail "dpkg -r $PKG"
[ ! -e /usr/bin/pgsql-broker ] || fail "/usr/bin/pgsql-broker still there after dpkg -r"
[ ! -e "$UNIT" ] || fail "$UNIT still there after dpkg -r"
[ -f "$CONF" ] || fail "$CONF removed by dpkg -r (config must be kept until purge)"
grep -q "^    database: $DB\$" "$CONF" || fail "$CONF lost its local edits on dpkg -r"
check_conf_perms
[ "$(installed_state)" = "rc " ] || fail "dpkg state after remove is '$(installed_state)', not 'rc'"
getent passwd pgsql-broker >/dev/null || fail "dpkg -r removed the user (only purge should)"
ok "binary and unit gone; edited $CONF and user kept; state rc"

step "dpkg -P $PKG: config gone"
dpkg -P "$PKG" || fail "dpkg -P $PKG"
[ ! -e "$CONF" ] || fail "$CONF still there after dpkg -P"
[ ! -e /etc/pgsql-broker ] || fail "/etc/pgsql-broker still there after dpkg -P"
[ -z "$(installed_state)" ] || fail "dpkg still knows $PKG after purge ('$(installed_state)')"
! getent passwd pgsql-broker >/dev/null || fail "user pgsql-broker still there after purge"
! getent group pgsql-broker >/dev/null || fail "group pgsql-broker still there after purge"
ok "config, /etc/pgsql-broker, user and group gone"

psql_ci -c "DROP DATABASE $DB" >/dev/null || fail "DROP DATABASE $DB"

# ---------------------------------------------------------------------------------------------
TOTAL=$(( $(date +%s) - START ))
echo
echo "==> packaging CI passed in ${TOTAL} s (build ${BUILD_SECS} s)"
printf '    %-8s %10s bytes  %s\n' binary "$(stat -c %s "$BIN")" "$BIN"
printf '    %-8s %10s bytes  %s\n' .deb "$(stat -c %s "$DEB")" "$DEB"
printf '    %-8s %10s bytes  %s\n' .rpm "$(stat -c %s "$RPM")" "$RPM"
echo "    ldd:"
ldd "$BIN" | sed 's/^/        /'
