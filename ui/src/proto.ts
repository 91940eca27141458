// Just enough protobuf for the flame graph calls: the answers are packed varints, a third
// of their JSON's size and decoded without parsing numbers from strings.
import type { FlameGraphJSON } from './api';

export class Writer {
  private out: number[] = [];
  varint(n: number): this {
    // non-negative and inside 2^53: milliseconds, node counts
    while (n >= 128) {
      this.out.push((n % 128) | 128);
      n = Math.floor(n / 128);
    }
    this.out.push(n);
    return this;
  }
  int(field: number, n: number): this {
    return this.varint(field << 3).varint(n);
  }
  bytes(field: number, b: Uint8Array): this {
    this.varint((field << 3) | 2).varint(b.length);
    for (const x of b) this.out.push(x);
    return this;
  }
  str(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }
  finish(): Uint8Array<ArrayBuffer> {
    return new Uint8Array(this.out);
  }
}

class Reader {
  pos = 0;
  constructor(
    private b: Uint8Array,
    public end = b.length,
  ) {}
  varint(): number {
    let n = 0;
    let mul = 1;
    for (;;) {
      const x = this.b[this.pos++];
      n += (x & 127) * mul;
      if (x < 128) break;
      mul *= 128;
    }
    // an int64 below zero comes as its 64-bit two's complement
    return n >= 2 ** 63 ? n - 2 ** 64 : n;
  }
  sub(): Reader {
    const len = this.varint();
    const r = new Reader(this.b, this.pos + len);
    r.pos = this.pos;
    this.pos += len;
    return r;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.pos += this.varint();
    else if (wire === 5) this.pos += 4;
    else throw new Error('unsupported protobuf wire type ' + wire);
  }
}

/// A FlameGraph or FlameGraphDiff (names 1, levels 2, total 3, max_self 4, left_ticks 5,
/// right_ticks 6), from an answer whose field 1 holds it.
export function decodeFlameGraph(buf: ArrayBuffer): FlameGraphJSON {
  const bytes = new Uint8Array(buf);
  const top = new Reader(bytes);
  const fg: FlameGraphJSON = { names: [], levels: [] };
  const text = new TextDecoder();
  while (top.pos < top.end) {
    const key = top.varint();
    if (key !== ((1 << 3) | 2)) {
      top.skip(key & 7);
      continue;
    }
    const r = top.sub();
    while (r.pos < r.end) {
      const k = r.varint();
      const field = k >>> 3;
      if (field === 1 && (k & 7) === 2) {
        const s = r.sub();
        fg.names!.push(text.decode(bytes.subarray(s.pos, s.end)));
      } else if (field === 2 && (k & 7) === 2) {
        const lv = r.sub();
        const values: number[] = [];
        while (lv.pos < lv.end) {
          const lk = lv.varint();
          if (lk === ((1 << 3) | 2)) {
            const p = lv.sub();
            while (p.pos < p.end) values.push(p.varint());
          } else if (lk === 1 << 3) values.push(lv.varint());
          else lv.skip(lk & 7);
        }
        fg.levels!.push({ values });
      } else if ((k & 7) === 0 && field >= 3 && field <= 6) {
        const v = r.varint();
        if (field === 3) fg.total = v;
        else if (field === 4) fg.maxSelf = v;
        else if (field === 5) fg.leftTicks = v;
        else fg.rightTicks = v;
      } else r.skip(k & 7);
    }
  }
  return fg;
}
