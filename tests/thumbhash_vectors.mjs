import { rgbaToThumbHash, thumbHashToRGBA } from 'thumbhash'
function pattern(w, h, alpha) {
  const px = new Uint8Array(w * h * 4)
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const i = 4 * (y * w + x)
    px[i] = (x * x * 7 + y * 3) % 256; px[i + 1] = (x * y * 5 + 11) % 256; px[i + 2] = (x * 13 + y * y * 2) % 256
    px[i + 3] = alpha ? (x * 29 + y * 17) % 256 : 255
  }
  return px
}
const out = {}
for (const [w, h, a] of [[32, 21, false], [21, 32, false], [32, 32, true], [100, 75, false], [7, 100, true], [1, 1, false], [32, 18, true]]) {
  const hash = rgbaToThumbHash(w, h, pattern(w, h, a))
  const dec = thumbHashToRGBA(hash)
  out[`${w}x${h}${a ? 'a' : ''}`] = { hash: Buffer.from(hash).toString('base64'), w: dec.w, h: dec.h,
    rgba: Buffer.from(dec.rgba).toString('hex') }
}
console.log(JSON.stringify(out))
