#!/usr/bin/env bash
# Carries a study's finished cells across machines: `save` packs every finished cell's records
# (results.json, run_config.json, study_cell.json, metrics.jsonl, evaluations.json where the
# cell evaluated along training; no checkpoints) into an
# archive, `restore` unpacks them into a workdir, where the same study command then trains only
# the missing cells (the shared teacher, sets and tables are rebuilt in its cache_dir, from the
# same config, for the cells still to train).
#
#   launch/study_cells.sh save /tmp/fashion_hald_paper launch/studies/fashion_hald_paper.tar.gz
#   launch/study_cells.sh restore /tmp/fashion_hald_paper launch/studies/fashion_hald_paper.tar.gz
set -euo pipefail
action="${1:?save or restore}"; workdir="${2:?workdir}"; archive="$(realpath -m "${3:?archive}")"
case "$action" in
  save)
    cd "$workdir"
    mapfile -t finished < <(find cells -mindepth 2 -maxdepth 2 -name results.json -printf '%h\n' | sort)
    [ "${#finished[@]}" -gt 0 ] || { echo "no finished cell in $workdir" >&2; exit 1; }
    files=()
    for cell in "${finished[@]}"; do
      for name in results.json run_config.json study_cell.json metrics.jsonl evaluations.json; do
        [ -f "$cell/$name" ] && files+=("$cell/$name")
      done
    done
    mkdir -p "$(dirname "$archive")"
    tar czf "$archive" "${files[@]}"
    echo "saved ${#finished[@]} finished cells of $workdir"
    ;;
  restore)
    mkdir -p "$workdir"
    tar xzf "$archive" -C "$workdir"
    echo "restored $(tar tzf "$archive" | grep -c '/results.json$') finished cells into $workdir"
    ;;
  *) echo "unknown action $action (save or restore)" >&2; exit 2 ;;
esac
