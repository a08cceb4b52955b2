"""Errors raised by the registry.

    RegistryError                  base class; every failure the registry reports
    ├── NotFoundError              a model, version or alias that does not exist
    ├── InvalidInputError          a malformed name, bad metadata or an unusable contract
    ├── ConflictError              an operation the current state forbids
    │   │                          (promoting an archived version, archiving a served one,
    │   │                          a contract change nobody allowed)
    │   └── ArtifactCheckError     a promotion's target cannot be served: missing, corrupt,
    │                              unloadable, or not what its contract says
    ├── IntegrityError             a stored artifact whose bytes no longer match its sha256
    ├── StorageError               the artifact store cannot be read or written (disk full,
    │                              permissions); the message names the store and the operation
    └── DatabaseError              the database cannot be used
        ├── DatabaseUnavailableError   cannot connect
        └── SchemaOutOfDateError       the schema is behind the code: run `registry db upgrade`

Each class carries an ``exit_code`` for the CLI and a ``status_code`` for HTTP,
so both front ends map errors in one place. The CLI adds exit code 2 for a usage
error (unknown command, missing argument) and 1 for anything unexpected.
"""

from __future__ import annotations


class RegistryError(Exception):
    exit_code = 1
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(RegistryError):
    exit_code = 3
    status_code = 404


class InvalidInputError(RegistryError):
    exit_code = 4
    status_code = 422


class ConflictError(RegistryError):
    exit_code = 5
    status_code = 409


class ArtifactCheckError(ConflictError):
    exit_code = 8


class IntegrityError(RegistryError):
    exit_code = 6
    status_code = 500


class StorageError(RegistryError):
    exit_code = 9
    status_code = 503


class DatabaseError(RegistryError):
    exit_code = 7
    status_code = 503


class DatabaseUnavailableError(DatabaseError):
    pass


class SchemaOutOfDateError(DatabaseError):
    pass
