export { ApiClient, CliErrorCode, DEFAULT_API_URL } from './api-client.js';
export { type CliEnvironment, ExitCode, runCli } from './run.js';
export {
  DEFAULT_API_LISTEN,
  DEFAULT_DATA_DIR,
  DEFAULT_NBD_LISTEN,
  type ServeFunction,
  type ServeOptions,
} from './serve-command.js';
