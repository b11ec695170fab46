// schema.ts: loads the wire contract (schemas/*.schema.json) into ajv (JSON Schema 2020-12),
// with the extension keywords the schemas use (x-msgpack uint64/bin, x-maxBytes), and answers
// "is this a valid frame of its type?" with messages that name the field. Pure code + fs.
import Ajv2020, { ErrorObject, ValidateFunction } from 'ajv/dist/2020';
import * as fs from 'fs';
import * as path from 'path';
import { PACKAGE_ROOT } from '../package';
import { FRAME_TYPES, FrameType, KnownFrame } from './generated';

/** schemas/ of this package. */
export const SCHEMA_DIR = path.join(PACKAGE_ROOT, 'schemas');

const U64_MAX = (1n << 64n) - 1n;

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
interface SchemaNode {
  [k: string]: Json | undefined;
}

export interface Violation {
  /** JSON pointer of the offending value ("" for the frame itself). */
  at: string;
  message: string;
}

export class FrameSchemas {
  readonly ajv: Ajv2020;
  private readonly byType = new Map<string, ValidateFunction>();
  private readonly frame: ValidateFunction;
  /** Per frame type, the top-level fields the schemas mark x-msgpack "uint64". */
  readonly u64Fields = new Map<string, string[]>();

  constructor(dir: string = SCHEMA_DIR) {
    this.ajv = new Ajv2020({ allErrors: false, strict: true, strictRequired: false, verbose: true });
    this.ajv.addKeyword({ keyword: 'tsType', schemaType: 'string' });
    this.ajv.addKeyword({ keyword: 'x-direction', schemaType: 'string' });
    this.ajv.addKeyword({
      keyword: 'x-msgpack',
      schemaType: 'string',
      errors: false,
      validate: (kind: string, data: unknown): boolean => {
        if (kind === 'uint64') {
          return (typeof data === 'bigint' && data >= 0n && data <= U64_MAX) || (typeof data === 'number' && Number.isSafeInteger(data) && data >= 0);
        }
        if (kind === 'bin') return data instanceof Uint8Array;
        return true; // a msgpack kind this version does not know: an annotation
      },
    });
    this.ajv.addKeyword({
      keyword: 'x-maxBytes',
      schemaType: 'number',
      errors: false,
      validate: (max: number, data: unknown): boolean => !(data instanceof Uint8Array) || data.length <= max,
    });
    const files = fs.readdirSync(dir).filter((f) => f.endsWith('.schema.json'));
    if (!files.includes('frame.schema.json')) {
      throw new Error(`the protocol schemas are missing: no frame.schema.json in ${dir} (reinstall the package; schemas/ ships with it)`);
    }
    const schemas = new Map<string, SchemaNode>();
    for (const f of files) {
      const s = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as SchemaNode;
      schemas.set(f, s);
      this.ajv.addSchema(s);
    }
    this.frame = this.ajv.getSchema(String(schemas.get('frame.schema.json')!.$id))!;
    const common = schemas.get('common.schema.json');
    for (const t of FRAME_TYPES) {
      const s = schemas.get(`${t}.schema.json`);
      if (!s) throw new Error(`schemas/${t}.schema.json is missing from ${dir}`);
      this.byType.set(t, this.ajv.getSchema(String(s.$id))!);
      const props = (s.properties ?? {}) as Record<string, SchemaNode>;
      const u64: string[] = [];
      for (const [name, p] of Object.entries(props)) {
        const target = typeof p.$ref === 'string' ? resolveCommon(common, p.$ref) : p;
        if (target?.['x-msgpack'] === 'uint64') u64.push(name);
      }
      this.u64Fields.set(t, u64);
    }
  }

  isKnownType(t: unknown): t is FrameType {
    return typeof t === 'string' && this.byType.has(t);
  }

  /**
   * Checks a decoded frame. A known type must match its schema; an unknown type passes
   * (forward compatibility). Returns the first violation, or undefined.
   */
  check(frame: unknown): Violation | undefined {
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame) || frame instanceof Uint8Array) {
      return { at: '', message: 'a frame must be a msgpack map' };
    }
    const t = (frame as { type?: unknown }).type;
    if (typeof t !== 'string' || t.length === 0) return { at: '/type', message: 'a frame must have a non-empty string "type"' };
    const v = this.byType.get(t);
    if (!v) return undefined;
    if (v(frame)) return undefined;
    return describe(v.errors ?? []);
  }

  /** Validates against frame.schema.json itself (the oneOf of the contract); for tests. */
  checkWhole(frame: unknown): Violation | undefined {
    return this.frame(frame) ? undefined : describe(this.frame.errors ?? []);
  }

  /** Turns u64 fields that arrived as small msgpack integers (JS numbers) into bigints. */
  normalize(frame: Record<string, unknown>): void {
    const fields = new Set(typeof frame.type === 'string' ? this.u64Fields.get(frame.type) : undefined);
    // Any integer format is accepted (docs/protocol.md): Go's msgpack writes every int as int64.
    // Counts are JS numbers wherever they are: in arrays and in nested maps (stats.kernel).
    const small = (v: unknown): unknown => {
      if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
      if (Array.isArray(v)) return v.map(small);
      if (v !== null && typeof v === 'object' && !(v instanceof Uint8Array)) {
        const o = v as Record<string, unknown>;
        for (const [k, x] of Object.entries(o)) o[k] = small(x);
      }
      return v;
    };
    for (const [f, v] of Object.entries(frame)) {
      if (fields.has(f)) {
        if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) frame[f] = BigInt(v);
      } else {
        frame[f] = small(v);
      }
    }
  }
}

function resolveCommon(common: SchemaNode | undefined, ref: string): SchemaNode | undefined {
  const m = /^common\.schema\.json#\/\$defs\/(\w+)$/.exec(ref);
  const defs = common?.$defs as Record<string, SchemaNode> | undefined;
  return m && defs ? defs[m[1]!] : undefined;
}

function describe(errors: ErrorObject[]): Violation {
  const e = errors[0];
  if (!e) return { at: '', message: 'invalid' };
  let message = `${e.instancePath || 'frame'} ${e.message ?? 'is invalid'}`;
  if (e.keyword === 'x-msgpack') message = `${e.instancePath} must be a msgpack ${String(e.schema) === 'uint64' ? 'unsigned integer of at most 64 bits' : String(e.schema)}`;
  if (e.keyword === 'x-maxBytes') message = `${e.instancePath} must hold at most ${String(e.schema)} bytes`;
  if (e.keyword === 'required') message = `${e.instancePath || 'frame'} lacks the field "${String((e.params as { missingProperty?: string }).missingProperty)}"`;
  if (e.keyword === 'enum' || e.keyword === 'const') message += ` (${JSON.stringify((e.params as { allowedValues?: unknown; allowedValue?: unknown }).allowedValues ?? (e.params as { allowedValue?: unknown }).allowedValue)})`;
  return { at: e.instancePath, message };
}

let shared: FrameSchemas | undefined;
/** The schemas of this package, loaded once. */
export function frameSchemas(): FrameSchemas {
  shared ??= new FrameSchemas();
  return shared;
}

export type { KnownFrame };
