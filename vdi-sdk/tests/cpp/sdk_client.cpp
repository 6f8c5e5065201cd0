/* sdk_client.cpp: the vdi project's own C++ test client of libsqlvdi.so, written against
 * include/vdi_sdk.h, for what no third-party client of the corpus does. `cargo xtask sdk-test`
 * builds it and runs it against vdi-engine:
 *
 *   sdk_client bad-input SET FILE
 *       Every bad call before, during and after a one-device backup gets its VD_E_* code:
 *       NULL pointers, bad names, foreign and completed commands, wrong states, use after
 *       Close. The stream goes to FILE. Exit 0 when every check held.
 *   sdk_client primary backup|restore SET DIR
 *       Two devices, SET and SET-2. The primary serves SET; for each Read or Write it hands
 *       the buffer's handle (GetBufferHandle) to a child process, which maps it
 *       (MapBufferHandle) and does the I/O on DIR/dev0.bin itself; the primary then completes
 *       the command. The same child joins the set with OpenInSecondary and serves SET-2 on its
 *       own (DIR/dev1.bin). A restore fills every buffer through the mapping, and the engine
 *       checks every byte.
 *   sdk_client secondary backup|restore SET DIR    (started by the primary)
 */
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

#include "vdi_sdk.h"

static int failures = 0;

#define EXPECT(expr, want)                                                                   \
    do {                                                                                     \
        int got_ = (expr);                                                                   \
        if (got_ != (want)) {                                                                \
            std::fprintf(stderr, "FAIL %s:%d: %s = 0x%08x, expected %s (0x%08x)\n", __FILE__, \
                         __LINE__, #expr, (unsigned)got_, #want, (unsigned)(want));          \
            ++failures;                                                                      \
        }                                                                                    \
    } while (0)

static char* str(const std::string& s) { return const_cast<char*>(s.c_str()); }

static int bad_input(const std::string& set_name, const char* path)
{
    ClientVirtualDeviceSet vds;
    VDConfig cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = 1;
    ClientVirtualDevice* vd = nullptr;
    uint8_t* mapped = nullptr;
    unsigned int handle = 0;

    /* No set yet: every call but Create and OpenInSecondary is out of state. */
    EXPECT(vds.GetConfiguration(0, &cfg), VD_E_PROTOCOL);
    EXPECT(vds.OpenDevice(str(set_name), &vd), VD_E_PROTOCOL);
    EXPECT(vds.Close(), VD_E_PROTOCOL);
    EXPECT(vds.SignalAbort(), VD_E_PROTOCOL);
    EXPECT(vds.MapBufferHandle(1, &mapped), VD_E_PROTOCOL);

    /* Bad arguments to Create. */
    EXPECT(vds.Create(nullptr, &cfg), VD_E_INVALID);
    EXPECT(vds.Create(str(set_name), nullptr), VD_E_INVALID);
    EXPECT(vds.Create(str(std::string(200, 'x')), &cfg), VD_E_INVALID);
    char not_utf8[] = {'v', 'd', 'i', '\xff', '\xfe', 0};
    EXPECT(vds.Create(not_utf8, &cfg), VD_E_INVALID);
    EXPECT(vds.Create(str("a/b"), &cfg), VD_E_INVALID);
    VDConfig too_many = cfg;
    too_many.deviceCount = 65;
    EXPECT(vds.Create(str(set_name), &too_many), VD_E_NOTSUPPORTED);

    EXPECT(vds.Create(str(set_name), &cfg), 0);
    EXPECT(vds.Create(str(set_name), &cfg), VD_E_PROTOCOL);
    EXPECT(vds.OpenInSecondary(str(set_name)), VD_E_PROTOCOL);
    /* A second object cannot create a set of the same name. */
    {
        ClientVirtualDeviceSet other;
        EXPECT(other.Create(str(set_name), &cfg), VD_E_PROTOCOL);
    }
    EXPECT(vds.GetConfiguration(0, nullptr), VD_E_INVALID);
    EXPECT(vds.OpenDevice(str(set_name), &vd), VD_E_PROTOCOL); /* not configured yet */

    std::printf("SDK_CLIENT_READY\n");
    std::fflush(stdout);
    int status = vds.GetConfiguration(60000, &cfg);
    EXPECT(status, 0);
    if (status != 0) return 1;
    if (!(cfg.features & VDF_WriteMedia)) {
        std::fprintf(stderr, "FAIL: expected a backup (features 0x%x)\n", cfg.features);
        return 1;
    }

    EXPECT(vds.OpenDevice(str(set_name), nullptr), VD_E_INVALID);
    EXPECT(vds.OpenDevice(nullptr, &vd), VD_E_INVALID);
    EXPECT(vds.OpenDevice(str("no-such-device"), &vd), VD_E_INVALID);
    if (vd != nullptr) {
        std::fprintf(stderr, "FAIL: OpenDevice left a device after failing\n");
        ++failures;
    }
    EXPECT(vds.OpenDevice(str(set_name), &vd), 0);
    if (vd == nullptr) return 1;
    ClientVirtualDevice* again = nullptr;
    EXPECT(vds.OpenDevice(str(set_name), &again), VD_E_OPEN);

    ClientVirtualDevice unopened; /* never handed out by OpenDevice */
    VDC_Command* cmd = nullptr;
    EXPECT(unopened.GetCommand(0, &cmd), VD_E_PROTOCOL);
    EXPECT(vd->GetCommand(0, nullptr), VD_E_INVALID);

    FILE* out = std::fopen(path, "wb");
    if (!out) {
        std::perror(path);
        return 1;
    }
    bool probed = false;
    while ((status = vd->GetCommand(-1, &cmd)) == 0) {
        int code = ERROR_SUCCESS;
        unsigned long bytes = 0;
        if (cmd->commandCode == VDC_Write) {
            bytes = std::fwrite(cmd->buffer, 1, cmd->size, out);
            if (bytes != (unsigned long)cmd->size) code = ERROR_DISK_FULL;
        } else if (cmd->commandCode != VDC_Flush && cmd->commandCode != VDC_ClearError &&
                   cmd->commandCode != VDC_Complete) {
            code = ERROR_NOT_SUPPORTED;
        }
        if (!probed && cmd->commandCode == VDC_Write) {
            probed = true;
            VDC_Command foreign = *cmd; /* same contents, not ours */
            EXPECT(vd->CompleteCommand(&foreign, 0, bytes, 0), VD_E_INVALID);
            EXPECT(vd->CompleteCommand(nullptr, 0, bytes, 0), VD_E_INVALID);
            EXPECT(unopened.CompleteCommand(cmd, 0, bytes, 0), VD_E_PROTOCOL);
            EXPECT(vd->CompleteCommand(cmd, 0, (unsigned long)cmd->size + 1, 0), VD_E_INVALID);
            EXPECT(vd->CompleteCommand(cmd, 0, 1ul << 40, 0), VD_E_INVALID);
            EXPECT(vds.GetBufferHandle(cmd->buffer, nullptr), VD_E_INVALID);
            EXPECT(vds.GetBufferHandle(nullptr, &handle), VD_E_INVALID);
            EXPECT(vds.GetBufferHandle(cmd->buffer + 1, &handle), VD_E_INVALID);
            EXPECT(vds.GetBufferHandle(cmd->buffer, &handle), 0);
            /* In the process that holds the command, its handle maps to its buffer. */
            EXPECT(vds.MapBufferHandle((int)handle, &mapped), 0);
            if (mapped != cmd->buffer) {
                std::fprintf(stderr, "FAIL: own handle mapped to %p, not %p\n", (void*)mapped,
                             (void*)cmd->buffer);
                ++failures;
            }
            EXPECT(vds.MapBufferHandle((int)(handle ^ 0x5a5a0000u), &mapped), VD_E_INVALID);
            EXPECT(vds.MapBufferHandle((int)handle, nullptr), VD_E_INVALID);
            /* A client may write the command's size; what counts is the command's own. */
            int size = cmd->size;
            cmd->size = 0;
            EXPECT(vd->CompleteCommand(cmd, code, bytes, 0), 0);
            /* Completed: still readable until the next GetCommand, and not completable. */
            if (cmd->commandCode != VDC_Write) {
                std::fprintf(stderr, "FAIL: the completed command changed\n");
                ++failures;
            }
            cmd->size = size;
            EXPECT(vd->CompleteCommand(cmd, code, bytes, 0), VD_E_INVALID);
            continue;
        }
        EXPECT(vd->CompleteCommand(cmd, code, bytes, 0), 0);
    }
    EXPECT(status, VD_E_CLOSE);
    EXPECT(vd->GetCommand(0, &cmd), VD_E_CLOSE); /* and it stays closed */
    if (cmd != nullptr) {
        std::fprintf(stderr, "FAIL: a failed GetCommand left a command\n");
        ++failures;
    }
    std::fclose(out);
    vds.RegisterDeviceClosed();
    EXPECT(vds.Close(), 0);

    /* Use after Close. */
    EXPECT(vds.Close(), VD_E_PROTOCOL);
    EXPECT(vds.SignalAbort(), VD_E_PROTOCOL);
    EXPECT(vds.GetConfiguration(0, &cfg), VD_E_PROTOCOL);
    ClientVirtualDevice* late = nullptr;
    EXPECT(vds.OpenDevice(str(set_name), &late), VD_E_PROTOCOL);
    /* A device that returned VD_E_CLOSE, of a set that is now closed: the set machine's answer
     * (spec section 6), VD_E_PROTOCOL. */
    EXPECT(vd->GetCommand(0, &cmd), VD_E_PROTOCOL);
    EXPECT(unopened.GetCommand(0, &cmd), VD_E_PROTOCOL);
    EXPECT(vds.GetBufferHandle(reinterpret_cast<uint8_t*>(&cfg), &handle), VD_E_PROTOCOL);
    EXPECT(vds.MapBufferHandle(1, &mapped), VD_E_PROTOCOL);
    /* After Close the object can create a set again. */
    EXPECT(vds.Create(str(set_name + "-again"), &cfg), 0);
    EXPECT(vds.Close(), 0);

    if (failures) {
        std::fprintf(stderr, "bad-input: %d check(s) failed\n", failures);
        return 1;
    }
    std::printf("bad-input: every check passed\n");
    return 0;
}

/* One device's command loop doing its own I/O on `f` (the secondary's device). */
static int serve(ClientVirtualDevice* vd, FILE* f)
{
    VDC_Command* cmd = nullptr;
    int status;
    while ((status = vd->GetCommand(-1, &cmd)) == 0) {
        int code = ERROR_SUCCESS;
        unsigned long bytes = 0;
        switch (cmd->commandCode) {
        case VDC_Write:
            bytes = std::fwrite(cmd->buffer, 1, cmd->size, f);
            if (bytes != (unsigned long)cmd->size) code = ERROR_DISK_FULL;
            break;
        case VDC_Read:
            bytes = std::fread(cmd->buffer, 1, cmd->size, f);
            if (bytes != (unsigned long)cmd->size) code = ERROR_HANDLE_EOF;
            break;
        case VDC_Flush:
            std::fflush(f);
            break;
        case VDC_ClearError:
            break;
        default:
            code = ERROR_NOT_SUPPORTED;
        }
        if (vd->CompleteCommand(cmd, code, bytes, 0) != 0) return -1;
    }
    return status;
}

static int secondary(bool backup, const std::string& set_name, const std::string& dir)
{
    ClientVirtualDeviceSet vds;
    int status = vds.OpenInSecondary(str(set_name));
    if (status != 0) {
        std::fprintf(stderr, "secondary: OpenInSecondary: 0x%08x\n", (unsigned)status);
        return 1;
    }
    EXPECT(vds.OpenInSecondary(str(set_name)), VD_E_PROTOCOL);
    VDConfig cfg;
    EXPECT(vds.GetConfiguration(10000, &cfg), 0);
    if (((cfg.features & VDF_WriteMedia) != 0) != backup) {
        std::fprintf(stderr, "FAIL: secondary sees features 0x%x\n", cfg.features);
        ++failures;
    }
    ClientVirtualDevice* vd = nullptr;
    status = vds.OpenDevice(str(set_name + "-2"), &vd);
    if (status != 0) {
        std::fprintf(stderr, "secondary: OpenDevice: 0x%08x\n", (unsigned)status);
        return 1;
    }
    FILE* own = std::fopen((dir + "/dev1.bin").c_str(), backup ? "wb" : "rb");
    FILE* mapped_io = std::fopen((dir + "/dev0.bin").c_str(), backup ? "wb" : "rb");
    if (!own || !mapped_io) {
        std::perror("secondary: fopen");
        return 1;
    }
    int device_status = 0;
    std::thread device([&] { device_status = serve(vd, own); });

    /* The primary's buffers: "<handle> <size>" in, the byte count (or -1) out. */
    unsigned long mapped_count = 0;
    char line[64];
    while (std::fgets(line, sizeof line, stdin)) {
        unsigned int handle = 0;
        int size = 0;
        if (std::sscanf(line, "%u %d", &handle, &size) != 2) break;
        uint8_t* buffer = nullptr;
        long done = -1;
        if (vds.MapBufferHandle((int)handle, &buffer) == 0 && buffer != nullptr) {
            done = (long)(backup ? std::fwrite(buffer, 1, size, mapped_io)
                                 : std::fread(buffer, 1, size, mapped_io));
            ++mapped_count;
        }
        std::printf("%ld\n", done);
        std::fflush(stdout);
    }
    device.join();
    std::fclose(own);
    std::fclose(mapped_io);
    EXPECT(device_status, VD_E_CLOSE);
    EXPECT(vds.Close(), 0);
    std::fprintf(stderr, "secondary: %lu buffers mapped\n", mapped_count);
    if (mapped_count == 0) ++failures;
    return failures ? 1 : 0;
}

static int primary(const char* self, bool backup, const std::string& set_name,
                   const std::string& dir)
{
    ClientVirtualDeviceSet vds;
    VDConfig cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.deviceCount = 2;
    if (vds.Create(str(set_name), &cfg) != 0) return 1;
    std::printf("SDK_CLIENT_READY\n");
    std::fflush(stdout);
    int status = vds.GetConfiguration(60000, &cfg);
    if (status != 0) {
        std::fprintf(stderr, "primary: GetConfiguration: 0x%08x\n", (unsigned)status);
        return 1;
    }

    int to_child[2], from_child[2];
    if (pipe(to_child) != 0 || pipe(from_child) != 0) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(to_child[0], 0);
        dup2(from_child[1], 1);
        close(to_child[1]);
        close(from_child[0]);
        execl("/proc/self/exe", self, "secondary", backup ? "backup" : "restore", set_name.c_str(),
              dir.c_str(), (char*)nullptr);
        _exit(127);
    }
    close(to_child[0]);
    close(from_child[1]);
    FILE* to = fdopen(to_child[1], "w");
    FILE* from = fdopen(from_child[0], "r");

    ClientVirtualDevice* vd = nullptr;
    status = vds.OpenDevice(str(set_name), &vd);
    if (status != 0) {
        std::fprintf(stderr, "primary: OpenDevice: 0x%08x\n", (unsigned)status);
        vds.SignalAbort();
    }
    VDC_Command* cmd = nullptr;
    while (vd && (status = vd->GetCommand(-1, &cmd)) == 0) {
        int code = ERROR_SUCCESS;
        unsigned long bytes = 0;
        if (cmd->commandCode == VDC_Read || cmd->commandCode == VDC_Write) {
            unsigned int handle = 0;
            EXPECT(vds.GetBufferHandle(cmd->buffer, &handle), 0);
            std::fprintf(to, "%u %d\n", handle, cmd->size);
            std::fflush(to);
            char line[64];
            long done = -1;
            if (!std::fgets(line, sizeof line, from) || std::sscanf(line, "%ld", &done) != 1)
                done = -1;
            if (done < 0) {
                std::fprintf(stderr, "FAIL: the secondary could not map handle %u\n", handle);
                ++failures;
                code = 31; /* ERROR_GEN_FAILURE */
            } else {
                bytes = (unsigned long)done;
                if (bytes != (unsigned long)cmd->size)
                    code = cmd->commandCode == VDC_Read ? ERROR_HANDLE_EOF : ERROR_DISK_FULL;
            }
        } else if (cmd->commandCode != VDC_Flush && cmd->commandCode != VDC_ClearError) {
            code = ERROR_NOT_SUPPORTED;
        }
        if (vd->CompleteCommand(cmd, code, bytes, 0) != 0) break;
    }
    EXPECT(status, VD_E_CLOSE);
    std::fclose(to);
    int child = 0;
    waitpid(pid, &child, 0);
    std::fclose(from);
    if (!WIFEXITED(child) || WEXITSTATUS(child) != 0) {
        std::fprintf(stderr, "FAIL: the secondary process failed (status 0x%x)\n", child);
        ++failures;
    }
    EXPECT(vds.Close(), 0);
    std::printf("primary: %s\n", failures ? "failed" : "ok");
    return failures ? 1 : 0;
}

int main(int argc, char** argv)
{
    std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "bad-input" && argc == 4) return bad_input(argv[2], argv[3]);
    if ((mode == "primary" || mode == "secondary") && argc == 5) {
        bool backup = std::strcmp(argv[2], "backup") == 0;
        if (mode == "primary") return primary(argv[0], backup, argv[3], argv[4]);
        return secondary(backup, argv[3], argv[4]);
    }
    std::fprintf(stderr,
                 "usage: sdk_client bad-input SET FILE | primary|secondary backup|restore SET DIR\n");
    return 2;
}
