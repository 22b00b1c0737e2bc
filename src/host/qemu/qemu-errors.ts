import { FerryError } from '../../util/errors.js';

/**
 * Codes of the QEMU layer's operating errors. Kept here rather than in ../errors.ts while the
 * layer is new; once the agent exposes VMs through the API they move into HostErrorCode and get
 * a row in src/api/error-table.ts (each keeps its meaning: clients may branch on it).
 */
export const QemuErrorCode = {
  /** A QemuSpec that cannot become a command line (an id QEMU would refuse, a malformed MAC). */
  BadSpec: 'ERR_QEMU_SPEC',
  /** QEMU exited before it was ready; the message carries QEMU's own stderr. */
  LaunchFailed: 'ERR_QEMU_LAUNCH',
  /** Something took longer than its stated limit (launch, a QMP command, an event, an exit). */
  Timeout: 'ERR_QEMU_TIMEOUT',
  /** The QMP socket never accepted a connection, or accepted but sent no greeting. */
  QmpConnect: 'ERR_QMP_CONNECT',
  /** QEMU answered a command with an error (`QmpError` carries QMP's class and desc). */
  QmpCommand: 'ERR_QMP_COMMAND',
  /** The QMP connection ended (QEMU exited, or we closed it) with a command or wait pending. */
  QmpClosed: 'ERR_QMP_CLOSED',
  /** QEMU sent something that is not QMP: a line over the limit, bad JSON, an unknown id. */
  QmpProtocol: 'ERR_QMP_PROTOCOL',
  /** Too many commands in flight on one QMP connection. */
  QmpBusy: 'ERR_QMP_BUSY',
  /** A live migration ended in `failed` or `cancelled` while the caller waited for another state. */
  MigrationFailed: 'ERR_MIGRATION_FAILED',
} as const;
export type QemuErrorCode = (typeof QemuErrorCode)[keyof typeof QemuErrorCode];

export class QemuError extends FerryError<QemuErrorCode> {
  override readonly name: string = 'QemuError';
}

/**
 * QEMU refused a command. `qmpClass` is QMP's error class (`GenericError`, `CommandNotFound`,
 * `DeviceNotFound`, ...; docs/interop/qmp-spec.txt, "2.4.2 error"), `desc` its human text;
 * callers branch on `qmpClass`, never on `desc`.
 */
export class QmpError extends QemuError {
  override readonly name = 'QmpError';
  readonly command: string;
  readonly qmpClass: string;
  readonly desc: string;
  constructor(command: string, qmpClass: string, desc: string) {
    super(QemuErrorCode.QmpCommand, `QEMU refused QMP command ${command}: ${desc} (${qmpClass})`);
    this.command = command;
    this.qmpClass = qmpClass;
    this.desc = desc;
  }
}
