export { NbdClient, type NbdClientOptions } from './client.js';
export type { ExportProvider, NbdExport } from './exports.js';
export { NbdServer, type NbdServerOptions } from './server.js';
