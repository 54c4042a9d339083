#!/bin/sh
# verify-release.sh RELEASE KEYS REVOKED THRESHOLD FLOOR [BOARD]
#
# The board's own check of a release, with nothing but signify-openbsd, sed, od, base64
# and sha256sum (busybox is enough), so a host that skips its checks still cannot get an
# unsigned, tampered, revoked-key, wrong-board or old (replayed) release past the board.
#
#   RELEASE    release folder: manifest.json, signatures/KEYID.sig, payload files
#   KEYS       folder of trusted signify public keys (*.pub, any file names)
#   REVOKED    file of revoked key ids, one per line, '#' comments ('' or missing: none)
#   THRESHOLD  how many trusted, unrevoked keys must have signed
#   FLOOR      the release number must be above this; nothing signed can lower it
#   BOARD      if given, the board profile the release must be made for
#
# Set VERIFY_PAYLOADS=no to check only the manifest (a caller that hashes the written
# partitions itself). On success prints "ok release N" and one "payload NAME FILE SIZE
# SHA256" line per payload and exits 0; otherwise prints one line saying what failed on
# stderr and exits 1 (2 for bad usage).
set -u

fail() {
    echo "verify-release: $*" >&2
    exit 1
}

if [ $# -lt 5 ] || [ $# -gt 6 ]; then
    echo "usage: verify-release.sh RELEASE KEYS REVOKED THRESHOLD FLOOR [BOARD]" >&2
    exit 2
fi
release=$1 keys=$2 revoked=$3 threshold=$4 floor=$5 board=${6:-}
signify=${SIGNIFY:-signify-openbsd}
manifest=$release/manifest.json

case $threshold in '' | *[!0-9]* | 0) fail "threshold '$threshold' is not a number from 1" ;; esac
case $floor in '' | *[!0-9]*) fail "floor '$floor' is not a number" ;; esac
[ -f "$manifest" ] || fail "$release: not a release (no manifest.json)"

# The key number (bytes 2..9 of the decoded key) is the key id that names signature files.
key_id() {
    sed -n 2p "$1" | base64 -d 2>/dev/null | od -An -tx1 -j2 -N8 | tr -d ' \n'
}

is_revoked() {
    [ -n "$revoked" ] && [ -f "$revoked" ] &&
        sed 's/#.*//' "$revoked" | tr -d ' \t\r' | grep -qx "$1"
}

is_key_id() {
    case $1 in
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]) return 0 ;;
    esac
    return 1
}

# The host's policy (signing/policy.py): signatures/ holds only KEYID.sig files, each one
# signify signature in its strict two-line form made by that key; anything else there
# refuses the release, whoever's key it names, so host and board never judge different
# sets of files.
well_formed_sig() { # FILE KEYID
    [ -f "$1" ] && [ ! -L "$1" ] || return 1
    [ "$(wc -c <"$1")" -le 2048 ] || return 1
    [ "$(wc -l <"$1")" -eq 2 ] && [ "$(tail -c 1 "$1" | od -An -tx1 | tr -d ' ')" = 0a ] || return 1
    head -n 1 "$1" | grep -q '^untrusted comment: ' || return 1
    body=$(sed -n 2p "$1")
    [ "$(printf '%s' "$body" | base64 -d 2>/dev/null | base64 -w 0)" = "$body" ] || return 1
    [ "$(printf '%s' "$body" | base64 -d 2>/dev/null | wc -c)" -eq 74 ] || return 1
    [ "$(printf '%s' "$body" | base64 -d | od -An -tx1 -N10 | tr -d ' \n')" = "4564$2" ]
}
for entry in "$release"/signatures/* "$release"/signatures/.*; do
    [ -e "$entry" ] || [ -L "$entry" ] || continue # an unmatched glob
    name=${entry##*/}
    case $name in . | ..) continue ;; esac
    id=${name%.sig}
    if [ "$id.sig" != "$name" ] || ! is_key_id "$id"; then
        fail "signature signatures/$name: is not a signature file (signatures/ holds only KEYID.sig)"
    fi
    well_formed_sig "$entry" "$id" || fail "signature $id: malformed or not by key $id"
done

valid=0
counted=" "
trusted=" "
revoked_seen=""
for pub in "$keys"/*.pub; do
    [ -f "$pub" ] || continue
    id=$(key_id "$pub")
    is_key_id "$id" || fail "trusted key $pub is not a signify public key"
    trusted="$trusted$id "
    case $counted in *" $id "*) continue ;; esac
    sig=$release/signatures/$id.sig
    [ -f "$sig" ] || continue
    if is_revoked "$id"; then
        revoked_seen="$revoked_seen $id"
        continue
    fi
    # signify checks that the signature's key number is this key's before the math.
    if "$signify" -V -q -p "$pub" -x "$sig" -m "$manifest" >/dev/null 2>&1; then
        valid=$((valid + 1))
        counted="$counted$id "
    else
        fail "signature $id: by trusted key $id does not verify (manifest or signature altered)"
    fi
done

if [ "$valid" -lt "$threshold" ]; then
    unknown=""
    for sig in "$release"/signatures/*.sig; do
        [ -f "$sig" ] || continue
        id=${sig##*/}
        id=${id%.sig}
        case $trusted in *" $id "*) ;; *) unknown="$unknown $id" ;; esac
    done
    if [ -z "$unknown$revoked_seen" ] && [ "$valid" -eq 0 ]; then
        fail "release is not signed (no signatures)"
    fi
    reason="$valid valid signature(s) from trusted keys, need $threshold"
    [ -n "$revoked_seen" ] && reason="$reason; signed by revoked key$revoked_seen"
    [ -n "$unknown" ] && reason="$reason; signed by unknown key$unknown"
    fail "$reason"
fi

# From here the manifest is authenticated. Its canonical form puts each top-level field
# on its own line with a one-space indent, so sed reads fields without a JSON parser.
field() {
    sed -n "s/^ \"$1\": \(.*\)\$/\1/p" "$manifest" | sed 's/,$//'
}

number=$(field release)
made_for=$(field board | sed 's/^"\(.*\)"$/\1/')
case $number in '' | *[!0-9]*) fail "malformed manifest: field release is not a number" ;; esac

if [ -n "$board" ] && [ "$made_for" != "$board" ]; then
    fail "release is for board '$made_for', not '$board'"
fi
if [ "$number" -le "$floor" ]; then
    fail "release $number is not above the board's floor $floor"
fi

# Payload objects sit inside the top-level "payloads" array, one field per line, keys
# sorted: file, name, sha256, size, then the closing brace.
payloads=$(sed -n '/^ "payloads": \[$/,/^ \],\{0,1\}$/p' "$manifest")
listing=""
count=0
file="" name="" sha="" size=""
while read -r line; do
    case $line in
        '"file": '*) file=${line#'"file": "'}; file=${file%,}; file=${file%'"'} ;;
        '"name": '*) name=${line#'"name": "'}; name=${name%,}; name=${name%'"'} ;;
        '"sha256": '*) sha=${line#'"sha256": "'}; sha=${sha%,}; sha=${sha%'"'} ;;
        '"size": '*) size=${line#'"size": '}; size=${size%,} ;;
        '}' | '},')
            case $file in '' | */* | .*) fail "malformed manifest: payload file '$file'" ;; esac
            case $size in '' | *[!0-9]*) fail "malformed manifest: payload $name size" ;; esac
            if [ "${VERIFY_PAYLOADS:-yes}" != no ]; then
                label="payload $name ($file)"
                path=$release/$file
                [ -f "$path" ] || fail "$label is missing"
                actual=$(wc -c <"$path" | tr -d ' ')
                [ "$actual" = "$size" ] || fail "$label has size $actual bytes, manifest says $size"
                digest=$(sha256sum <"$path" | cut -d' ' -f1)
                [ "$digest" = "$sha" ] || fail "$label has SHA-256 $digest, manifest says $sha"
            fi
            listing="${listing}payload $name $file $size $sha
"
            count=$((count + 1))
            file="" name="" sha="" size=""
            ;;
    esac
done <<EOF_PAYLOADS
$payloads
EOF_PAYLOADS
[ "$count" -gt 0 ] || fail "malformed manifest: no payloads"

echo "ok release $number"
printf '%s' "$listing"
