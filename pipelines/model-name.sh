#!/bin/sh
# The checkpoint's name from a model path in any form, lower case: a folder
# keeps its dots (FLUX.1-dev -> flux.1-dev); a file loses .safetensors, a
# shard its -0000N-of-0000M, an index its .safetensors.index.json; a
# transformer/ folder and the diffusers files inside one take the name of
# the folder above.
m=${1%/}
case "$m" in
*.safetensors | *.json) file=1 ;;
*) file=0 ;;
esac
if [ $file = 1 ] && [ ! -d "$m" ]; then
	case "$m" in
	*/*) d=${m%/*} ;;
	*) d=. ;;
	esac
	b=${m##*/}
	b=${b%.safetensors.index.json}
	b=${b%.safetensors}
	b=$(printf '%s' "$b" | sed -E 's/-[0-9]+-of-[0-9]+$//')
	case "$b" in
	diffusion_pytorch_model*) m=$d ;;
	*) m=$b ;;
	esac
fi
[ "${m##*/}" = transformer ] && m=$(dirname "$m")
case "${m##*/}" in
. | .. | "") m=$(cd "$m" 2>/dev/null && pwd) ;;
esac
printf '%s\n' "${m##*/}" | tr 'A-Z' 'a-z'
