/*
 * ImageJ 1.x opening a TIFF the way its File > Open and File > Import > TIFF Virtual Stack do, without a display.
 * Usage: java -cp /usr/share/java/ij.jar ImageJCheck.java FILE SLICE [virtual]   (SLICE counted from 0)
 * Prints the IFDs ImageJ decoded and the image count it took from the description, then the stack's size, bit
 * depth and the value of pixel (x=5, y=3) of SLICE, opened whole (unless "virtual") and as a virtual stack.
 */
import ij.ImagePlus;
import ij.io.FileInfo;
import ij.io.Opener;
import ij.io.TiffDecoder;
import ij.plugin.FileInfoVirtualStack;
import java.io.File;

public class ImageJCheck {
    public static void main(String[] args) throws Exception {
        File file = new File(args[0]);
        FileInfo[] info = new TiffDecoder(file.getParent() + File.separator, file.getName()).getTiffInfo();
        System.out.println("ifds=" + info.length + " images=" + info[0].nImages + " offset=" + info[0].getOffset());
        int slice = Integer.parseInt(args[1]);
        if (args.length < 3 || !args[2].equals("virtual")) {
            ImagePlus stack = new Opener().openImage(args[0]);
            stack.setSlice(slice + 1);
            System.out.println("stack slices=" + stack.getStackSize() + " bits=" + stack.getBitDepth() + " pixel="
                               + stack.getProcessor().getPixelValue(5, 3));
        }
        ImagePlus virtual = new ImagePlus(file.getName(), new FileInfoVirtualStack(info[0], false));
        virtual.setSlice(slice + 1);
        System.out.println("virtual=" + virtual.getStack().isVirtual() + " slices=" + virtual.getStackSize()
                           + " bits=" + virtual.getBitDepth() + " pixel=" + virtual.getProcessor().getPixelValue(5, 3));
    }
}
