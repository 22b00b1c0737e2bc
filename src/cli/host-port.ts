import { InvalidArgumentError } from 'commander';

/**
 * `HOST:PORT` for the listen flags: `127.0.0.1:10809`, `[::1]:7480`, `0.0.0.0:0` (port 0 picks
 * a free port). A commander argument parser: a bad value is a usage error.
 */
export interface HostPort {
  readonly host: string;
  readonly port: number;
}

export function parseHostPort(text: string): HostPort {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  const host = match?.[1] ?? match?.[2];
  const port = Number(match?.[3]);
  if (host === undefined || !Number.isInteger(port) || port > 65535) {
    throw new InvalidArgumentError(
      `"${text}" is not HOST:PORT (e.g. 127.0.0.1:10809 or [::1]:10809)`,
    );
  }
  return { host, port };
}

/** `host:port` for a URL, with brackets around an IPv6 address. */
export function formatHostPort(address: HostPort): string {
  return address.host.includes(':')
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}
