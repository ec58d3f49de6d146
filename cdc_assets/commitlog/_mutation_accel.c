/* The C form of MutationDecoder.decode (mutation.py); mutation.py is the reference and this file follows it
 * step by step.
 *
 * decode(decoder, data, unsigned_ldt) walks one mutation's bytes (format notes, section 10) and builds the same
 * change dicts as the pure decoder. Tables come from decoder._table(raw_id), which caches them; each
 * TableDecoder compiles its spec() once with compile_table() (its `compiled` attribute).
 *
 * Values of the common scalar types at their usual lengths are decoded here. Every other value, and any
 * unusual length, goes to the pure decoder from values.py that the spec carries, so results and errors are the
 * pure ones by construction. Every length is checked against the buffer before it is used. Where the pure
 * decoder slices past the end, it hands the short slice to a value decoder and then fails with an IndexError
 * that decode() turns into a MutationDecodeError; this one decodes the bytes that are left the same way, then
 * raises MutationDecodeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define TIMESTAMP_EPOCH 1442880000000000ULL
#define DELETION_TIME_EPOCH 1442880000ULL
#define NO_DELETION_TIME_V13 0xFFFFFFFFu
/* Entry framing (format notes, section 5); the codes are entries.py's. */
#define MIN_ENTRY_SIZE 10
#define ENTRY_HEADER_CUT 1
#define ENTRY_BAD_SIZE 2
#define ENTRY_SIZE_CRC 3
#define ENTRY_PAST_SECTION 4
#define ENTRY_BODY_CRC 5

/* Partition flags (10.3) */
#define IS_EMPTY 0x01
#define HAS_PARTITION_DELETION 0x04
#define HAS_STATIC_ROW 0x08
#define HAS_ROW_ESTIMATE 0x10
/* Row flags (10.6) */
#define END_OF_PARTITION 0x01
#define IS_MARKER 0x02
#define HAS_TIMESTAMP 0x04
#define HAS_TTL 0x08
#define HAS_DELETION 0x10
#define HAS_ALL_COLUMNS 0x20
#define HAS_COMPLEX_DELETION 0x40
#define EXTENSION_FLAG 0x80
#define IS_STATIC 0x01
/* Cell flags (10.8) */
#define CELL_IS_DELETED 0x01
#define CELL_IS_EXPIRING 0x02
#define CELL_HAS_EMPTY_VALUE 0x04
#define CELL_USE_ROW_TIMESTAMP 0x08
#define CELL_USE_ROW_TTL 0x10

/* Header column lists up to this size need no allocation per row. */
#define SMALL_HEADER 64

static PyObject *MutationDecodeError;
static PyObject *KIND_ROW, *KIND_STATIC_ROW, *KIND_PARTITION_DELETION, *KIND_RANGE_DELETION;
static PyObject *S_kind, *S_key, *S_clustering, *S_row_writetime, *S_row_ttl, *S_row_expires_at;
static PyObject *S_deletion_writetime, *S_deletion_time, *S_cells, *S_deletion, *S_path, *S_value;
static PyObject *S_writetime, *S_ttl, *S_expires_at, *S_deleted, *S_range_start, *S_range_start_inclusive;
static PyObject *S_range_end, *S_range_end_inclusive, *S_table, *S_compiled;
static PyObject *LIVE_TIMESTAMP_OBJ, *ZERO;
static const unsigned char EMPTY[1] = {0};

/* ------------------------------------------------------------------------------------------------------
 * Values (section 11): the kinds decoded natively; everything else goes to the pure decoder.
 */

typedef enum {
    V_PYTHON, V_INT, V_BOOLEAN, V_FLOAT, V_DOUBLE, V_TEXT, V_BLOB, V_UUID, V_DATE, V_VARINT, V_DECIMAL
} ValueKind;

static const struct {
    const char *name;
    ValueKind kind;
} NATIVE_KINDS[] = {
    {"tinyint", V_INT}, {"smallint", V_INT}, {"int", V_INT},      {"bigint", V_INT},     {"timestamp", V_INT},
    {"time", V_INT},    {"boolean", V_BOOLEAN}, {"float", V_FLOAT}, {"double", V_DOUBLE}, {"text", V_TEXT},
    {"ascii", V_TEXT},  {"blob", V_BLOB},    {"uuid", V_UUID},     {"timeuuid", V_UUID},  {"date", V_DATE},
    {"varint", V_VARINT}, {"decimal", V_DECIMAL},
};

typedef struct {
    ValueKind kind;
    Py_ssize_t fixed;  /* length of a value written without a length prefix, or -1 */
    PyObject *decode;  /* the pure decoder (borrowed from the spec), or None: the cells carry no value */
} Slot;

static int64_t read_signed(const unsigned char *p, Py_ssize_t n)
{
    uint64_t value = (p[0] & 0x80) ? UINT64_MAX : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        value = (value << 8) | p[i];
    }
    return (int64_t)value;
}

static PyObject *format_uuid(const unsigned char *p)
{
    static const char hex[] = "0123456789abcdef";
    PyObject *text = PyUnicode_New(36, 127);
    if (text == NULL) {
        return NULL;
    }
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(text);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            *out++ = '-';
        }
        *out++ = hex[p[i] >> 4];
        *out++ = hex[p[i] & 0x0F];
    }
    return text;
}

/* str(Decimal((sign, digits of unscaled, -scale))): Decimal.__str__'s rules for a finite number, with the
 * capital E of the default decimal context. */
static PyObject *format_decimal(int64_t unscaled, long scale)
{
    char digits[24], out[64];
    int count = 0, o = 0;
    uint64_t magnitude = unscaled < 0 ? 0 - (uint64_t)unscaled : (uint64_t)unscaled;
    do {
        digits[count++] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude);
    for (int i = 0; i < count / 2; i++) {
        char swap = digits[i];
        digits[i] = digits[count - 1 - i];
        digits[count - 1 - i] = swap;
    }
    long exponent = -scale, left = exponent + count;
    long dot = (exponent <= 0 && left > -6) ? left : 1;
    if (unscaled < 0) {
        out[o++] = '-';
    }
    if (dot <= 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (long i = 0; i < -dot; i++) {
            out[o++] = '0';
        }
        memcpy(out + o, digits, count);
        o += count;
    }
    else if (dot >= count) {
        memcpy(out + o, digits, count);
        o += count;
        for (long i = 0; i < dot - count; i++) {
            out[o++] = '0';
        }
    }
    else {
        memcpy(out + o, digits, dot);
        o += (int)dot;
        out[o++] = '.';
        memcpy(out + o, digits + dot, count - dot);
        o += (int)(count - dot);
    }
    if (left != dot) {
        o += snprintf(out + o, sizeof(out) - o, "E%+ld", left - dot);
    }
    return PyUnicode_FromStringAndSize(out, o);
}

static PyObject *call_pure(PyObject *decode, const unsigned char *p, Py_ssize_t n)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)p, n);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_CallOneArg(decode, raw);
    Py_DECREF(raw);
    return value;
}

static PyObject *unpacked_float(double value)
{
    if (value == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    return PyFloat_FromDouble(value);
}

/* One value from its bytes (no framing), as slot->decode would give it. */
static PyObject *decode_value(const Slot *slot, const unsigned char *p, Py_ssize_t n)
{
    switch (slot->kind) {
    case V_INT:
        if (n >= 1 && n <= 8) {
            return PyLong_FromLongLong(read_signed(p, n));
        }
        break;
    case V_BOOLEAN:
        if (n >= 1) {
            return PyBool_FromLong(p[0] != 0);
        }
        break;
    case V_FLOAT:
        if (n == 4) {
            return unpacked_float(PyFloat_Unpack4((const char *)p, 0));
        }
        break;
    case V_DOUBLE:
        if (n == 8) {
            return unpacked_float(PyFloat_Unpack8((const char *)p, 0));
        }
        break;
    case V_TEXT:
        return PyUnicode_DecodeUTF8((const char *)p, n, NULL);
    case V_BLOB:
        return PyBytes_FromStringAndSize((const char *)p, n);
    case V_UUID:
        if (n == 16) {
            return format_uuid(p);
        }
        break;
    case V_DATE:
        if (n == 4) {
            uint32_t days = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
            return PyLong_FromLongLong((long long)days - 2147483648LL);
        }
        break;
    case V_VARINT:
        if (n >= 1 && n <= 8) {
            return PyUnicode_FromFormat("%lld", (long long)read_signed(p, n));
        }
        break;
    case V_DECIMAL:
        if (n >= 4 && n <= 12) {
            int32_t scale = (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
            return format_decimal(n > 4 ? read_signed(p + 4, n - 4) : 0, scale);
        }
        break;
    case V_PYTHON:
        break;
    }
    return call_pure(slot->decode, p, n);
}

/* ------------------------------------------------------------------------------------------------------
 * Compiled tables: TableDecoder.spec() in C structs. Every object pointer is borrowed from the spec tuple,
 * which the TableSpec keeps alive.
 */

typedef enum { SIMPLE, COLLECTION, STRUCT } Shape;

typedef struct {
    const char *raw_name;
    Py_ssize_t raw_length;
    PyObject *name;
    PyObject *cql;
    Shape shape;
    Slot value;    /* SIMPLE and COLLECTION: the cell value (decode None for a set) */
    Slot path;     /* COLLECTION: the cell path; STRUCT: decode gives the field position */
    Py_ssize_t field_count;
    PyObject **field_names;
    Slot *fields;
    int dropped;   /* 0: live; 1: cells written at or before dropped_at are discarded */
    int dropped_cmp; /* dropped_at beyond int64: -1 keeps every simple cell, 1 none */
    int64_t dropped_at;
} Column;

typedef struct {
    PyObject_HEAD
    PyObject *spec;
    PyObject *table;
    PyObject *qualified_name;
    PyObject *key_decoder;
    Py_ssize_t key_count;
    PyObject **key_names;
    Slot *key;
    Py_ssize_t clustering_count;
    PyObject **clustering_names;
    Slot *clustering;
    Py_ssize_t column_count;
    Column *columns;
    PyObject *column_index; /* column name bytes -> position in columns */
} TableSpec;

static void table_spec_dealloc(TableSpec *self)
{
    if (self->columns != NULL) {
        for (Py_ssize_t i = 0; i < self->column_count; i++) {
            PyMem_Free(self->columns[i].field_names);
            PyMem_Free(self->columns[i].fields);
        }
    }
    PyMem_Free(self->columns);
    PyMem_Free(self->key_names);
    PyMem_Free(self->key);
    PyMem_Free(self->clustering_names);
    PyMem_Free(self->clustering);
    Py_XDECREF(self->column_index);
    Py_XDECREF(self->qualified_name);
    Py_XDECREF(self->spec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject TableSpecType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "cdc_assets.commitlog._mutation_accel.TableSpec",
    .tp_doc = PyDoc_STR("One table's TableDecoder.spec(), compiled for decode()."),
    .tp_basicsize = sizeof(TableSpec),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)table_spec_dealloc,
};

static int spec_error(const char *what)
{
    PyErr_Format(PyExc_TypeError, "invalid table spec: %s", what);
    return -1;
}

/* A slot from (fixed length or None, CQL kind name, pure decoder or None). */
static int parse_slot(PyObject *fixed, PyObject *kind, PyObject *decode, Slot *slot)
{
    if (!PyUnicode_Check(kind) || (decode != Py_None && !PyCallable_Check(decode))) {
        return spec_error("a value needs a kind name and a decoder");
    }
    slot->fixed = -1;
    if (fixed != Py_None) {
        slot->fixed = PyLong_AsSsize_t(fixed);
        if (slot->fixed < 0) {
            return PyErr_Occurred() ? -1 : spec_error("negative fixed length");
        }
    }
    slot->kind = V_PYTHON;
    if (decode != Py_None) {
        for (size_t i = 0; i < sizeof(NATIVE_KINDS) / sizeof(NATIVE_KINDS[0]); i++) {
            if (PyUnicode_CompareWithASCIIString(kind, NATIVE_KINDS[i].name) == 0) {
                slot->kind = NATIVE_KINDS[i].kind;
                break;
            }
        }
    }
    slot->decode = decode;
    return 0;
}

/* (name, fixed, kind, decode) items: key columns (fixed ignored) and clustering columns. */
static int parse_named_slots(PyObject *items, Py_ssize_t *count, PyObject ***names, Slot **slots)
{
    if (!PyTuple_Check(items)) {
        return spec_error("expected a tuple of (name, fixed, kind, decode)");
    }
    *count = PyTuple_GET_SIZE(items);
    *names = PyMem_Calloc(*count + 1, sizeof(PyObject *));
    *slots = PyMem_Calloc(*count + 1, sizeof(Slot));
    if (*names == NULL || *slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < *count; i++) {
        PyObject *item = PyTuple_GET_ITEM(items, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 4) {
            return spec_error("expected (name, fixed, kind, decode)");
        }
        (*names)[i] = PyTuple_GET_ITEM(item, 0);
        if (parse_slot(PyTuple_GET_ITEM(item, 1), PyTuple_GET_ITEM(item, 2), PyTuple_GET_ITEM(item, 3),
                       &(*slots)[i]) < 0) {
            return -1;
        }
    }
    return 0;
}

/* (name_bytes, name, cql, fixed, value, value_kind, path, path_kind, fields, dropped_at), see mutation.py. */
static int parse_column(PyObject *item, Column *column)
{
    PyObject *name_bytes, *fixed, *value, *value_kind, *path, *path_kind, *fields, *dropped_at;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 10) {
        return spec_error("a column needs 10 items");
    }
    name_bytes = PyTuple_GET_ITEM(item, 0);
    column->name = PyTuple_GET_ITEM(item, 1);
    column->cql = PyTuple_GET_ITEM(item, 2);
    fixed = PyTuple_GET_ITEM(item, 3);
    value = PyTuple_GET_ITEM(item, 4);
    value_kind = PyTuple_GET_ITEM(item, 5);
    path = PyTuple_GET_ITEM(item, 6);
    path_kind = PyTuple_GET_ITEM(item, 7);
    fields = PyTuple_GET_ITEM(item, 8);
    dropped_at = PyTuple_GET_ITEM(item, 9);
    if (!PyBytes_Check(name_bytes) || !PyUnicode_Check(column->name) || !PyTuple_Check(fields)) {
        return spec_error("a column needs name bytes, a name and a fields tuple");
    }
    column->raw_name = PyBytes_AS_STRING(name_bytes);
    column->raw_length = PyBytes_GET_SIZE(name_bytes);
    if (parse_slot(fixed, value_kind, value, &column->value) < 0 ||
        parse_slot(Py_None, path_kind, path, &column->path) < 0) {
        return -1;
    }
    column->shape = path == Py_None ? SIMPLE : PyTuple_GET_SIZE(fields) ? STRUCT : COLLECTION;
    if (column->shape == STRUCT) {
        if (!PyCallable_Check(path)) {
            return spec_error("a struct column needs a field position decoder");
        }
        if (parse_named_slots(fields, &column->field_count, &column->field_names, &column->fields) < 0) {
            return -1;
        }
    }
    column->dropped = dropped_at != Py_None;
    if (column->dropped) {
        int overflow;
        column->dropped_at = PyLong_AsLongLongAndOverflow(dropped_at, &overflow);
        if (column->dropped_at == -1 && PyErr_Occurred()) {
            return -1;
        }
        column->dropped_cmp = overflow;
    }
    return 0;
}

static PyObject *compile_table(PyObject *module, PyObject *spec)
{
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 5) {
        spec_error("expected (table, key decoder, key columns, clustering, columns)");
        return NULL;
    }
    TableSpec *self = PyObject_New(TableSpec, &TableSpecType);
    if (self == NULL) {
        return NULL;
    }
    memset((char *)self + sizeof(PyObject), 0, sizeof(TableSpec) - sizeof(PyObject));
    self->spec = Py_NewRef(spec);
    self->table = PyTuple_GET_ITEM(spec, 0);
    self->key_decoder = PyTuple_GET_ITEM(spec, 1);
    PyObject *columns = PyTuple_GET_ITEM(spec, 4);
    self->qualified_name = PyObject_GetAttrString(self->table, "qualified_name");
    self->column_index = PyDict_New();
    if (self->qualified_name == NULL || self->column_index == NULL) {
        goto error;
    }
    if (parse_named_slots(PyTuple_GET_ITEM(spec, 2), &self->key_count, &self->key_names, &self->key) < 0 ||
        parse_named_slots(PyTuple_GET_ITEM(spec, 3), &self->clustering_count, &self->clustering_names,
                          &self->clustering) < 0) {
        goto error;
    }
    if (!PyCallable_Check(self->key_decoder) || !PyTuple_Check(columns)) {
        spec_error("a table needs a key decoder and a columns tuple");
        goto error;
    }
    self->column_count = PyTuple_GET_SIZE(columns);
    self->columns = PyMem_Calloc(self->column_count + 1, sizeof(Column));
    if (self->columns == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (Py_ssize_t i = 0; i < self->column_count; i++) {
        PyObject *position = PyLong_FromSsize_t(i);
        if (position == NULL || parse_column(PyTuple_GET_ITEM(columns, i), &self->columns[i]) < 0 ||
            PyDict_SetItem(self->column_index, PyTuple_GET_ITEM(PyTuple_GET_ITEM(columns, i), 0), position) < 0) {
            Py_XDECREF(position);
            goto error;
        }
        Py_DECREF(position);
    }
    return (PyObject *)self;
error:
    Py_DECREF(self);
    return NULL;
}

/* ------------------------------------------------------------------------------------------------------
 * Reading: a cursor over the mutation and the partition update's EncodingStats (10.4).
 */

typedef struct {
    const unsigned char *data;
    Py_ssize_t length;
    Py_ssize_t pos;
    int unsigned_ldt;
    uint64_t min_timestamp;
    uint32_t min_ldt;
    uint32_t min_ttl;
} Reader;

static int fail(const char *message)
{
    PyErr_SetString(MutationDecodeError, message);
    return -1;
}

static int ends_early(void)
{
    return fail("malformed mutation: the bytes end inside it");
}

static int read_byte(Reader *r, unsigned *out)
{
    if (r->pos >= r->length) {
        return ends_early();
    }
    *out = r->data[r->pos++];
    return 0;
}

/* Cassandra's unsigned vint (10.1). */
static int read_uvint(Reader *r, uint64_t *out)
{
    if (r->pos >= r->length) {
        return ends_early();
    }
    unsigned first = r->data[r->pos];
    if (first < 0x80) {
        *out = first;
        r->pos++;
        return 0;
    }
    int extra = 0;
    while (extra < 8 && (first & (0x80u >> extra))) {
        extra++;
    }
    if (extra >= r->length - r->pos) {
        return ends_early();
    }
    uint64_t value = extra < 7 ? first & (0xFFu >> (extra + 1)) : 0;
    for (int i = 1; i <= extra; i++) {
        value = (value << 8) | r->data[r->pos + i];
    }
    r->pos += 1 + extra;
    *out = value;
    return 0;
}

/* `n` bytes at the cursor, which moves past them. */
static int take(Reader *r, uint64_t n, const unsigned char **out)
{
    if (n > (uint64_t)(r->length - r->pos)) {
        return ends_early();
    }
    *out = r->data + r->pos;
    r->pos += (Py_ssize_t)n;
    return 0;
}

/* A uvint length and that many bytes. */
static int take_prefixed(Reader *r, const unsigned char **out, Py_ssize_t *n)
{
    uint64_t length;
    if (read_uvint(r, &length) < 0 || take(r, length, out) < 0) {
        return -1;
    }
    *n = (Py_ssize_t)length;
    return 0;
}

static int read_timestamp(Reader *r, int64_t *out)
{
    uint64_t delta;
    if (read_uvint(r, &delta) < 0) {
        return -1;
    }
    *out = (int64_t)(r->min_timestamp + delta);
    return 0;
}

/* A local deletion time: None for "no deletion time" in messaging 13 (unsigned), signed before. */
static PyObject *read_ldt(Reader *r)
{
    uint64_t delta;
    if (read_uvint(r, &delta) < 0) {
        return NULL;
    }
    uint32_t value = (uint32_t)(r->min_ldt + delta);
    if (r->unsigned_ldt) {
        return value == NO_DELETION_TIME_V13 ? Py_NewRef(Py_None) : PyLong_FromUnsignedLong(value);
    }
    return PyLong_FromLong((int32_t)value);
}

static PyObject *read_ttl(Reader *r)
{
    uint64_t delta;
    if (read_uvint(r, &delta) < 0) {
        return NULL;
    }
    return PyLong_FromLong((int32_t)(uint32_t)(r->min_ttl + delta));
}

/* A DeletionTime: its timestamp (as a C value and an object) and local deletion time. */
static int read_deletion(Reader *r, int64_t *timestamp, PyObject **timestamp_obj, PyObject **ldt)
{
    if (read_timestamp(r, timestamp) < 0) {
        return -1;
    }
    *ldt = read_ldt(r);
    if (*ldt == NULL) {
        return -1;
    }
    *timestamp_obj = PyLong_FromLongLong(*timestamp);
    if (*timestamp_obj == NULL) {
        Py_CLEAR(*ldt);
        return -1;
    }
    return 0;
}

/* Set d[key] = value and drop the reference to value (which may be NULL after a failed call). */
static int set_steal(PyObject *d, PyObject *key, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int result = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return result;
}

/* A value of slot->fixed bytes, or a uvint length and that many bytes. One running past the end fails; when
 * `decodes`, the bytes left go to the value's decoder first, as the pure decoder's short slice does (so that
 * a decoder failing on them fails the same way). */
static int take_value(Reader *r, const Slot *slot, int decodes, const unsigned char **out, Py_ssize_t *n)
{
    uint64_t length = (uint64_t)slot->fixed;
    if (slot->fixed < 0 && read_uvint(r, &length) < 0) {
        return -1;
    }
    if (length > (uint64_t)(r->length - r->pos) && decodes) {
        PyObject *rest = decode_value(slot, r->data + r->pos, r->length - r->pos);
        if (rest == NULL) {
            return -1;
        }
        Py_DECREF(rest);
    }
    if (take(r, length, out) < 0) {
        return -1;
    }
    *n = (Py_ssize_t)length;
    return 0;
}

/* ------------------------------------------------------------------------------------------------------
 * Partition key (11.3) and clustering values (10.7).
 */

static PyObject *decode_key(const TableSpec *t, const unsigned char *p, Py_ssize_t n)
{
    PyObject *key = PyDict_New();
    if (key == NULL) {
        return NULL;
    }
    if (t->key_count == 1) {
        if (set_steal(key, t->key_names[0], decode_value(&t->key[0], p, n)) < 0) {
            Py_DECREF(key);
            return NULL;
        }
        return key;
    }
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < t->key_count; i++) {
        if (n - pos < 2) {
            goto pure;
        }
        Py_ssize_t length = ((Py_ssize_t)p[pos] << 8) | p[pos + 1];
        if (length > n - pos - 2) {
            goto pure;
        }
        if (set_steal(key, t->key_names[i], decode_value(&t->key[i], p + pos + 2, length)) < 0) {
            Py_DECREF(key);
            return NULL;
        }
        pos += 3 + length;
    }
    return key;
pure:
    /* A component running past the key: the pure decoder knows what it makes of the short slice. */
    Py_DECREF(key);
    return call_pure(t->key_decoder, p, n);
}

/* The first `size` clustering values into `values` (new references). */
static int read_clustering(Reader *r, const TableSpec *t, Py_ssize_t size, PyObject **values)
{
    uint64_t header = 0;
    Py_ssize_t i;
    for (i = 0; i < size; i++) {
        if (i % 32 == 0 && read_uvint(r, &header) < 0) {
            goto error;
        }
        int shift = (int)(i % 32) * 2;
        const Slot *slot = &t->clustering[i];
        if (header & (2ULL << shift)) {
            values[i] = Py_NewRef(Py_None);
            continue;
        }
        if (header & (1ULL << shift)) {
            values[i] = decode_value(slot, EMPTY, 0);
        }
        else {
            const unsigned char *p;
            Py_ssize_t n;
            if (take_value(r, slot, 1, &p, &n) < 0) {
                goto error;
            }
            values[i] = decode_value(slot, p, n);
        }
        if (values[i] == NULL) {
            goto error;
        }
    }
    return 0;
error:
    while (i-- > 0) {
        Py_DECREF(values[i]);
    }
    return -1;
}

/* {name: value} over the clustering columns: the first `size` from values (stolen), None for the rest. */
static PyObject *clustering_dict(const TableSpec *t, Py_ssize_t size, PyObject **values)
{
    PyObject *result = PyDict_New();
    for (Py_ssize_t i = 0; i < t->clustering_count; i++) {
        PyObject *value = i < size ? values[i] : Py_NewRef(Py_None);
        if (result != NULL && PyDict_SetItem(result, t->clustering_names[i], value) < 0) {
            Py_CLEAR(result);
        }
        Py_DECREF(value);
    }
    return result;
}

/* ------------------------------------------------------------------------------------------------------
 * Cells (10.8), rows (10.6), range tombstone markers (10.10).
 */

typedef struct {
    PyObject *timestamp; /* the row liveness timestamp, LIVE without one */
    PyObject *ttl;       /* its TTL, 0 without one */
    PyObject *ldt;       /* its expiry, None without one */
} RowLiveness;

/* One cell; for a struct column's cell, *field is its field position and the cell has no "path". */
static PyObject *read_cell(Reader *r, const Column *column, const RowLiveness *row, Py_ssize_t *field)
{
    unsigned flags;
    PyObject *cell = NULL, *timestamp = NULL, *ttl = NULL, *expires_at = NULL;
    if (read_byte(r, &flags) < 0) {
        return NULL;
    }
    if (flags & CELL_USE_ROW_TIMESTAMP) {
        timestamp = Py_NewRef(row->timestamp);
    }
    else {
        int64_t value;
        if (read_timestamp(r, &value) < 0 || (timestamp = PyLong_FromLongLong(value)) == NULL) {
            return NULL;
        }
    }
    int deleted = flags & CELL_IS_DELETED, expiring = flags & CELL_IS_EXPIRING;
    if (flags & CELL_USE_ROW_TTL) {
        ttl = Py_NewRef(row->ttl);
        expires_at = Py_NewRef(row->ldt);
    }
    else {
        if (deleted || expiring) {
            PyObject *ldt = read_ldt(r);
            if (ldt == NULL) {
                goto error;
            }
            if (expiring) {
                expires_at = ldt;
            }
            else {
                Py_DECREF(ldt);
            }
        }
        if (expiring && (ttl = read_ttl(r)) == NULL) {
            goto error;
        }
    }
    if ((cell = PyDict_New()) == NULL) {
        goto error;
    }
    const Slot *value_slot = &column->value;
    if (column->shape != SIMPLE) {
        const unsigned char *p;
        Py_ssize_t n;
        if (take_value(r, &column->path, 1, &p, &n) < 0) {
            goto error;
        }
        if (column->shape == COLLECTION) {
            if (set_steal(cell, S_path, decode_value(&column->path, p, n)) < 0) {
                goto error;
            }
        }
        else {
            /* A non-frozen UDT's cell path is the field's position; its value has that field's type. */
            long long position = 0;
            int overflow = 0;
            PyObject *decoded = NULL;
            if (n <= 8) {
                position = n ? read_signed(p, n) : 0;
            }
            else {
                if ((decoded = call_pure(column->path.decode, p, n)) == NULL) {
                    goto error;
                }
                position = PyLong_AsLongLongAndOverflow(decoded, &overflow);
                if (position == -1 && PyErr_Occurred()) {
                    Py_DECREF(decoded);
                    goto error;
                }
            }
            if (overflow || position < 0 || position >= column->field_count) {
                if (decoded == NULL && (decoded = PyLong_FromLongLong(position)) == NULL) {
                    goto error;
                }
                PyErr_Format(MutationDecodeError, "field %S of %R is not in the schema's %S", decoded, column->name,
                             column->cql);
                Py_DECREF(decoded);
                goto error;
            }
            Py_XDECREF(decoded);
            *field = (Py_ssize_t)position;
            value_slot = &column->fields[position];
        }
    }
    const unsigned char *raw = EMPTY;
    Py_ssize_t raw_length = 0;
    int decodes = value_slot->decode != Py_None && !deleted;
    if (!(flags & CELL_HAS_EMPTY_VALUE) && take_value(r, value_slot, decodes, &raw, &raw_length) < 0) {
        goto error;
    }
    if (value_slot->decode != Py_None) {
        PyObject *value = deleted ? Py_NewRef(Py_None) : decode_value(value_slot, raw, raw_length);
        if (set_steal(cell, S_value, value) < 0) {
            goto error;
        }
    }
    if (PyDict_SetItem(cell, S_writetime, timestamp) < 0 ||
        PyDict_SetItem(cell, S_ttl, ttl ? ttl : Py_None) < 0 ||
        PyDict_SetItem(cell, S_expires_at, expires_at ? expires_at : Py_None) < 0 ||
        PyDict_SetItem(cell, S_deleted, deleted ? Py_True : Py_False) < 0) {
        goto error;
    }
    Py_DECREF(timestamp);
    Py_XDECREF(ttl);
    Py_XDECREF(expires_at);
    return cell;
error:
    Py_XDECREF(cell);
    Py_XDECREF(timestamp);
    Py_XDECREF(ttl);
    Py_XDECREF(expires_at);
    return NULL;
}

static int simple_cell_kept(const Column *column, PyObject *cell)
{
    if (!column->dropped || column->dropped_cmp < 0) {
        return 1;
    }
    if (column->dropped_cmp > 0) {
        return 0;
    }
    int64_t writetime = PyLong_AsLongLong(PyDict_GetItemWithError(cell, S_writetime));
    return writetime > column->dropped_at;
}

/* A complex column's data in a row: {"deletion": ..., "cells": [...] or {field: cell}}. */
static PyObject *read_complex(Reader *r, const Column *column, const RowLiveness *row, int has_deletion)
{
    PyObject *deletion = Py_NewRef(Py_None), *elements = NULL, *result = NULL;
    uint64_t count;
    if (has_deletion) {
        int64_t timestamp;
        PyObject *timestamp_obj, *ldt;
        if (read_deletion(r, &timestamp, &timestamp_obj, &ldt) < 0) {
            goto done;
        }
        Py_DECREF(ldt);
        if (timestamp == INT64_MIN) {
            Py_DECREF(timestamp_obj);
        }
        else {
            Py_SETREF(deletion, timestamp_obj);
        }
    }
    if (read_uvint(r, &count) < 0) {
        goto done;
    }
    /* Every cell takes at least one byte: a larger count cannot be read (and the pure loop fails too). */
    if (count > (uint64_t)(r->length - r->pos)) {
        ends_early();
        goto done;
    }
    elements = column->shape == STRUCT ? PyDict_New() : PyList_New(0);
    if (elements == NULL) {
        goto done;
    }
    for (uint64_t i = 0; i < count; i++) {
        Py_ssize_t field = 0;
        PyObject *cell = read_cell(r, column, row, &field);
        if (cell == NULL) {
            goto done;
        }
        int status = column->shape == STRUCT ? PyDict_SetItem(elements, column->field_names[field], cell)
                                             : PyList_Append(elements, cell);
        Py_DECREF(cell);
        if (status < 0) {
            goto done;
        }
    }
    result = PyDict_New();
    if (result != NULL && (PyDict_SetItem(result, S_deletion, deletion) < 0 ||
                           PyDict_SetItem(result, S_cells, elements) < 0)) {
        Py_CLEAR(result);
    }
done:
    Py_DECREF(deletion);
    Py_XDECREF(elements);
    return result;
}

/* Columns.deserializeSubset (10.5): which header columns a row holds, into present (room for total). */
static int read_subset(Reader *r, Column **header, Py_ssize_t total, Column **present, Py_ssize_t *count)
{
    uint64_t encoded;
    if (read_uvint(r, &encoded) < 0) {
        return -1;
    }
    *count = 0;
    if (encoded == 0) {
        memcpy(present, header, total * sizeof(Column *));
        *count = total;
        return 0;
    }
    if (total < 64) {
        for (Py_ssize_t i = 0; i < total; i++) {
            if (!((encoded >> i) & 1)) {
                present[(*count)++] = header[i];
            }
        }
        return 0;
    }
    if (encoded >= (uint64_t)total) {
        return 0; /* more columns missing than there are: none present, as in the pure decoder */
    }
    Py_ssize_t present_count = total - (Py_ssize_t)encoded;
    if (present_count < total / 2) {
        for (Py_ssize_t i = 0; i < present_count; i++) {
            uint64_t index;
            if (read_uvint(r, &index) < 0) {
                return -1;
            }
            if (index >= (uint64_t)total) {
                return fail("malformed mutation: a column index past the header's columns");
            }
            present[(*count)++] = header[index];
        }
        return 0;
    }
    char *missing = PyMem_Calloc(total, 1);
    if (missing == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (uint64_t i = 0; i < encoded; i++) {
        uint64_t index;
        if (read_uvint(r, &index) < 0) {
            PyMem_Free(missing);
            return -1;
        }
        if (index < (uint64_t)total) {
            missing[index] = 1;
        }
    }
    for (Py_ssize_t i = 0; i < total; i++) {
        if (!missing[i]) {
            present[(*count)++] = header[i];
        }
    }
    PyMem_Free(missing);
    return 0;
}

/* The cells of a row's present columns, into change["cells"] when there are any. */
static int read_row_cells(Reader *r, Column **present, Py_ssize_t count, const RowLiveness *row,
                          int has_complex_deletion, PyObject *change)
{
    PyObject *cells = PyDict_New();
    if (cells == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        const Column *column = present[i];
        PyObject *data;
        int kept;
        if (column->shape == SIMPLE) {
            Py_ssize_t unused;
            data = read_cell(r, column, row, &unused);
            kept = data != NULL && simple_cell_kept(column, data);
        }
        else {
            data = read_complex(r, column, row, has_complex_deletion);
            kept = !column->dropped;
        }
        if (data == NULL || (kept && PyDict_SetItem(cells, column->name, data) < 0)) {
            Py_XDECREF(data);
            Py_DECREF(cells);
            return -1;
        }
        Py_DECREF(data);
    }
    int status = PyDict_GET_SIZE(cells) ? PyDict_SetItem(change, S_cells, cells) : 0;
    Py_DECREF(cells);
    return status;
}

/* A row (static when header is the static columns), appended to changes unless it carries nothing. */
static int read_row(Reader *r, const TableSpec *t, PyObject *key, Column **header, Py_ssize_t header_count,
                    int static_slot, PyObject *changes)
{
    unsigned flags, extended = 0;
    int status = -1;
    PyObject *change = NULL;
    RowLiveness row = {Py_NewRef(LIVE_TIMESTAMP_OBJ), Py_NewRef(ZERO), Py_NewRef(Py_None)};
    Column *small[SMALL_HEADER];
    Column **present = small;
    Py_ssize_t present_count = header_count;

    if (read_byte(r, &flags) < 0 || ((flags & EXTENSION_FLAG) && read_byte(r, &extended) < 0)) {
        goto done;
    }
    if ((int)(extended & IS_STATIC) != static_slot) {
        fail("static row flag where a regular row was expected, or the reverse");
        goto done;
    }
    change = PyDict_New();
    if (change == NULL || PyDict_SetItem(change, S_kind, static_slot ? KIND_STATIC_ROW : KIND_ROW) < 0 ||
        PyDict_SetItem(change, S_key, key) < 0) {
        goto done;
    }
    if (!static_slot && t->clustering_count) {
        PyObject *small_values[SMALL_HEADER];
        PyObject **values = small_values;
        if (t->clustering_count > SMALL_HEADER &&
            (values = PyMem_Malloc(t->clustering_count * sizeof(PyObject *))) == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        int read = read_clustering(r, t, t->clustering_count, values);
        if (read == 0) {
            read = set_steal(change, S_clustering, clustering_dict(t, t->clustering_count, values));
        }
        if (values != small_values) {
            PyMem_Free(values);
        }
        if (read < 0) {
            goto done;
        }
    }
    if (flags & HAS_TIMESTAMP) {
        int64_t timestamp;
        if (read_timestamp(r, &timestamp) < 0) {
            goto done;
        }
        Py_SETREF(row.timestamp, PyLong_FromLongLong(timestamp));
        if (row.timestamp == NULL || PyDict_SetItem(change, S_row_writetime, row.timestamp) < 0) {
            goto done;
        }
        if (flags & HAS_TTL) {
            Py_SETREF(row.ttl, read_ttl(r));
            if (row.ttl == NULL) {
                goto done;
            }
            Py_SETREF(row.ldt, read_ldt(r));
            if (row.ldt == NULL || PyDict_SetItem(change, S_row_ttl, row.ttl) < 0 ||
                PyDict_SetItem(change, S_row_expires_at, row.ldt) < 0) {
                goto done;
            }
        }
    }
    if (flags & HAS_DELETION) {
        int64_t unused;
        PyObject *timestamp, *ldt;
        if (read_deletion(r, &unused, &timestamp, &ldt) < 0) {
            goto done;
        }
        int stored = set_steal(change, S_deletion_writetime, timestamp);
        if (set_steal(change, S_deletion_time, ldt) < 0 || stored < 0) {
            goto done;
        }
    }
    if (flags & HAS_ALL_COLUMNS) {
        present = header;
    }
    else {
        if (header_count > SMALL_HEADER && (present = PyMem_Malloc(header_count * sizeof(Column *))) == NULL) {
            PyErr_NoMemory();
            goto done;
        }
        if (read_subset(r, header, header_count, present, &present_count) < 0) {
            goto done;
        }
    }
    if (read_row_cells(r, present, present_count, &row, flags & HAS_COMPLEX_DELETION, change) < 0) {
        goto done;
    }
    /* Kind and key always; a row with nothing else (all its cells were dropped columns') is skipped. */
    int has_clustering = !static_slot && t->clustering_count;
    status = PyDict_GET_SIZE(change) > 2 + has_clustering ? PyList_Append(changes, change) : 0;
done:
    if (present != small && present != header) {
        PyMem_Free(present);
    }
    Py_XDECREF(change);
    Py_XDECREF(row.timestamp);
    Py_XDECREF(row.ttl);
    Py_XDECREF(row.ldt);
    return status;
}

/* Range tombstone bound kinds (10.10): closes a range, its end inclusive, opens one, its start inclusive. */
static const struct {
    int valid, closes, end_inclusive, opens, start_inclusive;
} BOUND_KINDS[8] = {
    {1, 1, 0, 0, 0}, {1, 0, 0, 1, 1}, {1, 1, 0, 1, 1}, {0}, {0}, {1, 1, 1, 1, 0}, {1, 1, 1, 0, 0}, {1, 0, 0, 1, 0},
};

/* A range tombstone marker (after its flags byte). open_ranges holds (bound, start inclusive) not yet closed. */
static int read_marker(Reader *r, const TableSpec *t, PyObject *key, PyObject *changes, PyObject *open_ranges)
{
    const unsigned char *head;
    if (take(r, 3, &head) < 0) {
        return -1;
    }
    unsigned kind = head[0];
    Py_ssize_t size = ((Py_ssize_t)head[1] << 8) | head[2];
    if (kind >= 8 || !BOUND_KINDS[kind].valid || size > t->clustering_count) {
        PyErr_Format(MutationDecodeError, "invalid range tombstone bound (kind %u, %zd values)", kind, size);
        return -1;
    }
    PyObject *bound = Py_NewRef(Py_None);
    if (size) {
        PyObject *small_values[SMALL_HEADER];
        PyObject **values = small_values;
        if (size > SMALL_HEADER && (values = PyMem_Malloc(size * sizeof(PyObject *))) == NULL) {
            PyErr_NoMemory();
            goto error;
        }
        int read = read_clustering(r, t, size, values);
        if (read == 0) {
            Py_SETREF(bound, clustering_dict(t, size, values));
        }
        if (values != small_values) {
            PyMem_Free(values);
        }
        if (read < 0 || bound == NULL) {
            goto error;
        }
    }
    if (BOUND_KINDS[kind].closes) {
        int64_t unused;
        PyObject *timestamp, *ldt;
        if (read_deletion(r, &unused, &timestamp, &ldt) < 0) {
            goto error;
        }
        Py_ssize_t open_count = PyList_GET_SIZE(open_ranges);
        if (open_count == 0) {
            Py_DECREF(timestamp);
            Py_DECREF(ldt);
            fail("range tombstone end bound without a start");
            goto error;
        }
        PyObject *start = Py_NewRef(PyList_GET_ITEM(open_ranges, open_count - 1));
        PyObject *change = PyDict_New();
        int status = PyList_SetSlice(open_ranges, open_count - 1, open_count, NULL);
        if (change == NULL || status < 0 || PyDict_SetItem(change, S_kind, KIND_RANGE_DELETION) < 0 ||
            PyDict_SetItem(change, S_key, key) < 0 || PyDict_SetItem(change, S_deletion_writetime, timestamp) < 0 ||
            PyDict_SetItem(change, S_deletion_time, ldt) < 0 ||
            PyDict_SetItem(change, S_range_start, PyTuple_GET_ITEM(start, 0)) < 0 ||
            PyDict_SetItem(change, S_range_start_inclusive, PyTuple_GET_ITEM(start, 1)) < 0 ||
            PyDict_SetItem(change, S_range_end, bound) < 0 ||
            PyDict_SetItem(change, S_range_end_inclusive, BOUND_KINDS[kind].end_inclusive ? Py_True : Py_False) < 0 ||
            PyList_Append(changes, change) < 0) {
            status = -1;
        }
        Py_XDECREF(change);
        Py_DECREF(start);
        Py_DECREF(timestamp);
        Py_DECREF(ldt);
        if (status < 0) {
            goto error;
        }
    }
    if (BOUND_KINDS[kind].opens) {
        /* A boundary carries the deletion of the range it opens after the one it closes; the range
         * deletion takes its time from the closing bound, which always repeats it. */
        int64_t unused;
        PyObject *timestamp, *ldt;
        if (read_deletion(r, &unused, &timestamp, &ldt) < 0) {
            goto error;
        }
        Py_DECREF(timestamp);
        Py_DECREF(ldt);
        PyObject *opened = PyTuple_Pack(2, bound, BOUND_KINDS[kind].start_inclusive ? Py_True : Py_False);
        if (opened == NULL || PyList_Append(open_ranges, opened) < 0) {
            Py_XDECREF(opened);
            goto error;
        }
        Py_DECREF(opened);
    }
    Py_DECREF(bound);
    return 0;
error:
    Py_XDECREF(bound);
    return -1;
}

/* ------------------------------------------------------------------------------------------------------
 * Partition updates (10.3) and mutations (10.2).
 */

static int unknown_column(const TableSpec *t, const unsigned char *name, Py_ssize_t n)
{
    PyObject *text = PyUnicode_DecodeUTF8((const char *)name, n, "replace");
    if (text != NULL) {
        PyErr_Format(MutationDecodeError, "unknown column %R in %U: the schema is older than the mutation", text,
                     t->qualified_name);
        Py_DECREF(text);
    }
    return -1;
}

static Column *find_column(const TableSpec *t, const unsigned char *name, Py_ssize_t n, Py_ssize_t *hint)
{
    /* Header lists usually follow the spec's order: try the column after the last one found first. */
    if (*hint < t->column_count) {
        const Column *guess = &t->columns[*hint];
        if (guess->raw_length == n && memcmp(guess->raw_name, name, n) == 0) {
            return &t->columns[(*hint)++];
        }
    }
    PyObject *raw = PyBytes_FromStringAndSize((const char *)name, n);
    if (raw == NULL) {
        return NULL;
    }
    PyObject *position = PyDict_GetItemWithError(t->column_index, raw);
    Py_DECREF(raw);
    if (position == NULL) {
        if (!PyErr_Occurred()) {
            unknown_column(t, name, n);
        }
        return NULL;
    }
    *hint = PyLong_AsSsize_t(position) + 1;
    return &t->columns[*hint - 1];
}

/* A header column list (10.4): the columns by name, into a new array. */
static int read_column_list(Reader *r, const TableSpec *t, Column ***columns, Py_ssize_t *count)
{
    uint64_t n;
    if (read_uvint(r, &n) < 0) {
        return -1;
    }
    /* Every name takes at least its length byte: a larger count cannot be read. */
    if (n > (uint64_t)(r->length - r->pos)) {
        return ends_early();
    }
    *columns = PyMem_Malloc((n + 1) * sizeof(Column *));
    if (*columns == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *count = (Py_ssize_t)n;
    Py_ssize_t hint = 0;
    for (Py_ssize_t i = 0; i < *count; i++) {
        const unsigned char *name;
        Py_ssize_t length;
        if (take_prefixed(r, &name, &length) < 0 || ((*columns)[i] = find_column(t, name, length, &hint)) == NULL) {
            return -1;
        }
    }
    return 0;
}

static TableSpec *table_for(PyObject *decoder, const unsigned char *raw_id)
{
    PyObject *id = PyBytes_FromStringAndSize((const char *)raw_id, 16);
    if (id == NULL) {
        return NULL;
    }
    PyObject *table_decoder = PyObject_CallMethodOneArg(decoder, S_table, id);
    Py_DECREF(id);
    if (table_decoder == NULL) {
        return NULL;
    }
    PyObject *compiled = PyObject_GetAttr(table_decoder, S_compiled);
    Py_DECREF(table_decoder);
    if (compiled != NULL && !PyObject_TypeCheck(compiled, &TableSpecType)) {
        PyErr_SetString(PyExc_TypeError, "TableDecoder.compiled is not a compiled table spec");
        Py_CLEAR(compiled);
    }
    return (TableSpec *)compiled;
}

/* One partition update: (table, changes). */
static PyObject *read_partition_update(Reader *r, PyObject *decoder)
{
    const unsigned char *raw_id, *raw_key;
    uint64_t key_length, delta;
    unsigned flags;
    PyObject *key = NULL, *changes = NULL, *open_ranges = NULL, *result = NULL;
    Column **statics = NULL, **regulars = NULL;
    Py_ssize_t static_count = 0, regular_count = 0;
    TableSpec *t;

    if (take(r, 16, &raw_id) < 0 || (t = table_for(decoder, raw_id)) == NULL) {
        return NULL;
    }
    if (read_uvint(r, &key_length) < 0) {
        goto done;
    }
    if (key_length > (uint64_t)(r->length - r->pos)) {
        /* The pure decoder decodes the short key before failing: so does this one. */
        key = decode_key(t, r->data + r->pos, r->length - r->pos);
        if (key != NULL) {
            ends_early();
        }
        goto done;
    }
    if (take(r, key_length, &raw_key) < 0 || (key = decode_key(t, raw_key, (Py_ssize_t)key_length)) == NULL ||
        read_byte(r, &flags) < 0 || (changes = PyList_New(0)) == NULL) {
        goto done;
    }
    if (flags & IS_EMPTY) {
        result = PyTuple_Pack(2, t->table, changes);
        goto done;
    }
    if (read_uvint(r, &delta) < 0) {
        goto done;
    }
    r->min_timestamp = TIMESTAMP_EPOCH + delta;
    if (read_uvint(r, &delta) < 0) {
        goto done;
    }
    r->min_ldt = (uint32_t)(DELETION_TIME_EPOCH + delta);
    if (read_uvint(r, &delta) < 0) {
        goto done;
    }
    r->min_ttl = (uint32_t)delta;
    if ((flags & HAS_STATIC_ROW) && read_column_list(r, t, &statics, &static_count) < 0) {
        goto done;
    }
    if (read_column_list(r, t, &regulars, &regular_count) < 0) {
        goto done;
    }
    if (flags & HAS_PARTITION_DELETION) {
        int64_t unused;
        PyObject *timestamp, *ldt;
        if (read_deletion(r, &unused, &timestamp, &ldt) < 0) {
            goto done;
        }
        PyObject *change = PyDict_New();
        int status = change == NULL || PyDict_SetItem(change, S_kind, KIND_PARTITION_DELETION) < 0 ||
                     PyDict_SetItem(change, S_key, key) < 0 ||
                     PyDict_SetItem(change, S_deletion_writetime, timestamp) < 0 ||
                     PyDict_SetItem(change, S_deletion_time, ldt) < 0 || PyList_Append(changes, change) < 0;
        Py_XDECREF(change);
        Py_DECREF(timestamp);
        Py_DECREF(ldt);
        if (status) {
            goto done;
        }
    }
    if ((flags & HAS_STATIC_ROW) && read_row(r, t, key, statics, static_count, 1, changes) < 0) {
        goto done;
    }
    if ((flags & HAS_ROW_ESTIMATE) && read_uvint(r, &delta) < 0) {
        goto done;
    }
    if ((open_ranges = PyList_New(0)) == NULL) {
        goto done;
    }
    for (;;) {
        if (r->pos >= r->length) {
            ends_early();
            goto done;
        }
        unsigned row_flags = r->data[r->pos];
        if (row_flags == END_OF_PARTITION) {
            r->pos++;
            break;
        }
        if (row_flags & IS_MARKER) {
            r->pos++;
            if (read_marker(r, t, key, changes, open_ranges) < 0) {
                goto done;
            }
        }
        else if (read_row(r, t, key, regulars, regular_count, 0, changes) < 0) {
            goto done;
        }
    }
    result = PyTuple_Pack(2, t->table, changes);
done:
    PyMem_Free(statics);
    PyMem_Free(regulars);
    Py_XDECREF(open_ranges);
    Py_XDECREF(changes);
    Py_XDECREF(key);
    Py_DECREF(t);
    return result;
}

static PyObject *decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "decode(decoder, data: bytes, unsigned_ldt: bool)");
        return NULL;
    }
    int unsigned_ldt = PyObject_IsTrue(args[2]);
    if (unsigned_ldt < 0) {
        return NULL;
    }
    Reader r = {(const unsigned char *)PyBytes_AS_STRING(args[1]), PyBytes_GET_SIZE(args[1]), 0, unsigned_ldt};
    uint64_t count;
    if (read_uvint(&r, &count) < 0) {
        return NULL;
    }
    PyObject *updates = PyList_New(0);
    if (updates == NULL) {
        return NULL;
    }
    for (uint64_t i = 0; i < count; i++) {
        PyObject *update = read_partition_update(&r, args[0]);
        if (update == NULL || PyList_Append(updates, update) < 0) {
            Py_XDECREF(update);
            Py_DECREF(updates);
            return NULL;
        }
        Py_DECREF(update);
    }
    if (r.pos != r.length) {
        PyErr_Format(MutationDecodeError, "%zd bytes left after the last partition update", r.length - r.pos);
        Py_DECREF(updates);
        return NULL;
    }
    return updates;
}


/* ------------------------------------------------------------------------------------------------------ */
/* split_entries: the C form of entries.py's framing walk (format notes, section 5). It returns the same
 * error codes as the pure walk, and entries.py turns them into the same problems. CRC-32 is computed with a
 * table here, so the extension needs no zlib headers to build. */

static uint32_t crc_table[256];

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[i] = c;
    }
}

static uint32_t crc32_continue(uint32_t crc, const unsigned char *p, Py_ssize_t n)
{
    crc = ~crc;
    while (n-- > 0) {
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
}

static uint32_t be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static PyObject *split_entries(PyObject *module, PyObject *args)
{
    Py_buffer view;
    long long base, after;
    if (!PyArg_ParseTuple(args, "y*LL", &view, &base, &after)) {
        return NULL;
    }
    const unsigned char *data = view.buf;
    Py_ssize_t length = view.len, pos = 0;
    PyObject *entries = PyList_New(0);
    PyObject *result = NULL;
    int end_of_segment = 0, code = 0;
    long long error_size = 0;
    if (entries == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    while (length - pos >= 4) {
        int32_t size = (int32_t)be32(data + pos);
        if (size == 0) {
            end_of_segment = 1;
            break;
        }
        if (length - pos < 8) {
            code = ENTRY_HEADER_CUT;
            break;
        }
        if (size < MIN_ENTRY_SIZE) {
            code = ENTRY_BAD_SIZE;
            error_size = size;
            break;
        }
        uint32_t size_crc = crc32_continue(0, data + pos, 4);
        if (be32(data + pos + 4) != size_crc) {
            code = ENTRY_SIZE_CRC;
            error_size = size;
            break;
        }
        Py_ssize_t body = pos + 8;
        if ((long long)size + 4 > (long long)(length - body)) {
            code = ENTRY_PAST_SECTION;
            error_size = size;
            break;
        }
        if (be32(data + body + size) != crc32_continue(size_crc, data + body, size)) {
            code = ENTRY_BODY_CRC;
            error_size = size;
            break;
        }
        Py_ssize_t next = body + size + 4;
        if (base + next > after) {
            PyObject *entry = Py_BuildValue("(Ly#)", base + (long long)next, (const char *)(data + body), (Py_ssize_t)size);
            if (entry == NULL || PyList_Append(entries, entry) < 0) {
                Py_XDECREF(entry);
                goto done;
            }
            Py_DECREF(entry);
        }
        pos = next;
    }
    if (code) {
        result = Py_BuildValue("(OO(inL))", entries, Py_False, code, pos, error_size);
    } else {
        result = Py_BuildValue("(OOO)", entries, end_of_segment ? Py_True : Py_False, Py_None);
    }
done:
    Py_DECREF(entries);
    PyBuffer_Release(&view);
    return result;
}

/* ------------------------------------------------------------------------------------------------------ */

static PyMethodDef methods[] = {
    {"compile_table", (PyCFunction)compile_table, METH_O,
     PyDoc_STR("compile_table(spec) -> TableSpec: a TableDecoder.spec() tuple, compiled for decode().")},
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     PyDoc_STR("decode(decoder, data, unsigned_ldt) -> [(table, changes)]: MutationDecoder.decode in C.")},
    {"split_entries", (PyCFunction)split_entries, METH_VARARGS,
     PyDoc_STR("split_entries(data, base, after) -> (entries, end, error): entries.walk_entries in C.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cdc_assets.commitlog._mutation_accel",
    .m_doc = PyDoc_STR("Optional C accelerator for cdc_assets.commitlog.mutation.MutationDecoder."),
    .m_size = -1,
    .m_methods = methods,
};

static int intern_all(void)
{
    static const struct {
        PyObject **target;
        const char *text;
    } names[] = {
        {&S_kind, "kind"},
        {&S_key, "key"},
        {&S_clustering, "clustering"},
        {&S_row_writetime, "row_writetime"},
        {&S_row_ttl, "row_ttl"},
        {&S_row_expires_at, "row_expires_at"},
        {&S_deletion_writetime, "deletion_writetime"},
        {&S_deletion_time, "deletion_time"},
        {&S_cells, "cells"},
        {&S_deletion, "deletion"},
        {&S_path, "path"},
        {&S_value, "value"},
        {&S_writetime, "writetime"},
        {&S_ttl, "ttl"},
        {&S_expires_at, "expires_at"},
        {&S_deleted, "deleted"},
        {&S_range_start, "range_start"},
        {&S_range_start_inclusive, "range_start_inclusive"},
        {&S_range_end, "range_end"},
        {&S_range_end_inclusive, "range_end_inclusive"},
        {&S_table, "_table"},
        {&S_compiled, "compiled"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if ((*names[i].target = PyUnicode_InternFromString(names[i].text)) == NULL) {
            return -1;
        }
    }
    return 0;
}

static PyObject *attribute_of(const char *module_name, const char *name)
{
    PyObject *module = PyImport_ImportModule(module_name);
    if (module == NULL) {
        return NULL;
    }
    PyObject *value = PyObject_GetAttrString(module, name);
    Py_DECREF(module);
    return value;
}

PyMODINIT_FUNC PyInit__mutation_accel(void)
{
    if (PyType_Ready(&TableSpecType) < 0 || intern_all() < 0) {
        return NULL;
    }
    crc_init();
    /* The kind strings and the error class are the pure decoder's own objects. */
    MutationDecodeError = attribute_of("cdc_assets.commitlog.errors", "MutationDecodeError");
    KIND_ROW = attribute_of("cdc_assets.change_batch", "KIND_ROW");
    KIND_STATIC_ROW = attribute_of("cdc_assets.change_batch", "KIND_STATIC_ROW");
    KIND_PARTITION_DELETION = attribute_of("cdc_assets.change_batch", "KIND_PARTITION_DELETION");
    KIND_RANGE_DELETION = attribute_of("cdc_assets.change_batch", "KIND_RANGE_DELETION");
    LIVE_TIMESTAMP_OBJ = PyLong_FromLongLong(INT64_MIN);
    ZERO = PyLong_FromLong(0);
    if (MutationDecodeError == NULL || KIND_ROW == NULL || KIND_STATIC_ROW == NULL ||
        KIND_PARTITION_DELETION == NULL || KIND_RANGE_DELETION == NULL || LIVE_TIMESTAMP_OBJ == NULL ||
        ZERO == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&TableSpecType);
    if (PyModule_AddObject(module, "TableSpec", (PyObject *)&TableSpecType) < 0) {
        Py_DECREF(&TableSpecType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
