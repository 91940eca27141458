// kiln's public query API: Connect unary calls with JSON bodies, as Grafana makes them (the
// flame graph calls in protobuf).
import { decodeFlameGraph, Writer } from './proto';

let tenant = '';
export function setTenant(t: string): void {
  tenant = t;
}

export class ApiError extends Error {}

function headers(ct: string): Record<string, string> {
  const h: Record<string, string> = { 'content-type': ct };
  if (tenant) h['X-Scope-OrgID'] = tenant;
  return h;
}

async function send(url: string, init: RequestInit, what: string): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(url, init);
  } catch (e) {
    throw new ApiError(`${what}: kiln did not answer (${(e as Error).message})`);
  }
  if (!res.ok) {
    const text = await res.text();
    let msg = text.trim();
    try {
      const j = JSON.parse(text);
      msg = j.message || j.error || j.code || msg;
    } catch {
      // not JSON: the text itself
    }
    throw new ApiError(`${what} failed: ${msg || res.statusText} (HTTP ${res.status})`);
  }
  return res;
}

export async function call<T>(method: string, body: unknown): Promise<T> {
  const res = await send('/querier.v1.QuerierService/' + method, { method: 'POST', headers: headers('application/json'), body: JSON.stringify(body) }, method);
  const text = await res.text();
  return (text ? JSON.parse(text) : {}) as T;
}

/// A Connect call with a protobuf body and answer (for answers JSON cannot carry: a pprof).
export async function callProto(method: string, body: Uint8Array<ArrayBuffer>): Promise<ArrayBuffer> {
  const res = await send('/querier.v1.QuerierService/' + method, { method: 'POST', headers: headers('application/proto'), body }, method);
  return res.arrayBuffer();
}

export async function get(url: string): Promise<Blob> {
  return (await send(url, { headers: headers('application/json') }, url.split('?')[0])).blob();
}

export interface ProfileType {
  ID: string;
  name: string;
  sampleType: string;
  sampleUnit: string;
  periodType: string;
  periodUnit: string;
}
export interface Point {
  value: number;
  timestamp: string | number;
}
export interface Series {
  labels?: { name: string; value: string }[];
  points?: Point[];
}
export interface FlameGraphJSON {
  names?: string[];
  levels?: { values?: (string | number)[] }[];
  total?: string | number;
  maxSelf?: string | number;
  leftTicks?: string | number;
  rightTicks?: string | number;
}

export interface Range {
  start: number;
  end: number;
}

export const profileTypes = (r: Range) => call<{ profileTypes?: ProfileType[] }>('ProfileTypes', r).then((x) => x.profileTypes || []);
export const labelNames = (matchers: string[], r: Range) => call<{ names?: string[] }>('LabelNames', { matchers, ...r }).then((x) => x.names || []);
export const labelValues = (name: string, matchers: string[], r: Range) =>
  call<{ names?: string[] }>('LabelValues', { name, matchers, ...r }).then((x) => x.names || []);

export function selectSeries(profileTypeID: string, labelSelector: string, r: Range, step: number, groupBy: string[] = []) {
  return call<{ series?: Series[] }>('SelectSeries', { profileTypeID, labelSelector, ...r, step, groupBy, aggregation: 'TIME_SERIES_AGGREGATION_TYPE_SUM' }).then((x) => x.series || []);
}

export interface MergeRequest {
  profileTypeID: string;
  labelSelector: string;
  start: number;
  end: number;
  maxNodes: number;
}
/// SelectMergeStacktracesRequest in protobuf: profile_typeID 1, label_selector 2, start 3,
/// end 4, max_nodes 5.
function mergeRequest(req: MergeRequest): Writer {
  return new Writer().str(1, req.profileTypeID).str(2, req.labelSelector).int(3, req.start).int(4, req.end).int(5, req.maxNodes);
}

/// The merged flame graph, asked for and answered in protobuf (smaller and faster to make
/// and read than its JSON; the answer's shape is the same).
export const mergeStacktraces = async (req: MergeRequest) => decodeFlameGraph(await callProto('SelectMergeStacktraces', mergeRequest(req).finish()));

/// Diff (DiffRequest: left 1, right 2), in protobuf too.
export const diff = async (left: MergeRequest, right: MergeRequest) =>
  decodeFlameGraph(await callProto('Diff', new Writer().bytes(1, mergeRequest(left).finish()).bytes(2, mergeRequest(right).finish()).finish()));

/// SelectMergeProfile (the same fields 1-4), answered with the merged profile as a pprof
/// (google.v1.Profile), which JSON cannot carry.
export function mergeProfile(req: MergeRequest): Promise<ArrayBuffer> {
  return callProto('SelectMergeProfile', new Writer().str(1, req.profileTypeID).str(2, req.labelSelector).int(3, req.start).int(4, req.end).finish());
}
